"""Short SGD/AdamW trainings, one per config, that ``test_fsdp.py`` runs twice on the same global batches: alone (one
process, the whole batch, an unsharded model) and under ``torchrun --nproc_per_node 2`` (gloo on the CPU, half the
batch per process), sharded with ``hf_seqmodels.parallel.shard_model`` (torch's FSDP2 ``fully_shard``). One launch
trains every config in turn, so process start-up and the rendezvous are paid once.

    python fsdp_train.py --out DIR [--configs gla-conv-tied,memory --steps 4 --global-batch 4]
    python -m torch.distributed.run --standalone --nproc_per_node 2 fsdp_train.py --out DIR [...]

Global step ``s`` covers rows ``s*G .. s*G+G-1`` of the data; process ``r`` of ``W`` takes its contiguous ``G/W`` of
them. Every row has the same number of labelled tokens, so the mean of the per-process mean losses is the global mean
loss, and FSDP's gradient average (reduce-scatter / W) is the gradient of the global mean loss.

Configs: every name of TRAIN_CONFIGS (SGD, all parameters trained), and ``memory``: a GLA anchor with a trainable
memory bank (frozen anchor; ``memory_optimizer``, AdamW with weight decay), whose per-example memory paths make some
blocks fetched by one process's rows only and some by no row at all; under 2 processes it trains with DDP
(``memory-ddp``, ``find_unused_parameters=True``: ``shard_model`` refuses a memory model).

Then ``cp_train.train_all`` (``DIR/cp-trainer``): ``Trainer`` alone, ``ContextParallelTrainer`` under 2 processes.

For each run rank 0 writes ``DIR/<run>/log.json`` (global losses, the final logits on fixed inputs; or the error that
stopped that run), ``DIR/<run>/weights.safetensors`` (the full final weights, gathered) and, for the architectures,
``DIR/<run>/final/`` (``save_pretrained_sharded``: gathered by every rank, written by rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cp_train  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import TRAIN_CONFIGS, train_config_for  # noqa: E402
from integration_utils import ByteBlocks, build_lm, memory_model, memory_paths  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402

from hf_seqmodels.parallel import save_pretrained_sharded, shard_model  # noqa: E402

MEMORY_RUNS = ["memory-ddp"]


def full_state(model, sharded: bool) -> dict:
    if sharded:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict()
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def train(run: str, out: Path, args, world: int, rank: int) -> dict:
    torch.manual_seed(args.seed)  # the same initial weights in every process
    is_memory = run.startswith("memory")
    if is_memory:
        model = memory_model(train_config_for("gla-conv-tied"))
    else:
        config = train_config_for(run)
        config.initializer_range = 0.02  # as ddp_train.py: a stable run at lr 0.5 (rounding is not amplified)
        model = build_lm(config)
    model.train()
    if is_memory and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(full_state(model, False), str(out / "initial.safetensors"))
    ddp = is_memory and world > 1
    sharded = world > 1 and not ddp
    if sharded:
        shard_model(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    inner = model.module if ddp else model
    if is_memory:
        from hf_seqmodels.memory import memory_optimizer

        opt = memory_optimizer(inner)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    data = ByteBlocks(args.block, args.steps * args.global_batch).blocks
    per = args.global_batch // world
    paths = memory_paths(data.shape[0], args.global_batch)
    losses = []
    for step in range(args.steps):
        rows = slice(step * args.global_batch + rank * per, step * args.global_batch + (rank + 1) * per)
        ids = data[rows]
        extra = dict(memory_paths=paths[rows]) if is_memory else {}
        loss = model(input_ids=ids, labels=ids, **extra).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)
            loss = loss / world
        losses.append(float(loss))

    model.eval()
    probe = data[:2, : args.block // 2 + 3].contiguous()
    with torch.no_grad():
        logits = model(input_ids=probe, **(dict(memory_paths=paths[:2]) if is_memory else {})).logits
    state = full_state(inner, sharded)
    if not is_memory:
        if sharded:
            save_pretrained_sharded(inner, out / "final")
        elif rank == 0:
            inner.save_pretrained(out / "final")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / "weights.safetensors"))
        save_file({"input_ids": probe, "logits": logits.contiguous()}, str(out / "probe.safetensors"))
    return dict(world_size=world, per_device=per, losses=losses, sharded=sharded, ddp=ddp)


def main() -> int:
    """Train every config in turn; returns how many failed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=",".join(TRAIN_CONFIGS + MEMORY_RUNS), help="comma-separated run names")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=48)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    runs = args.runs.split(",")
    unknown = [n for n in runs if n not in TRAIN_CONFIGS + MEMORY_RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; expected names from {TRAIN_CONFIGS + MEMORY_RUNS}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by the world size {world}")
    if world > 1:
        dist.init_process_group("gloo")
    failed = 0
    for run in runs:
        out = Path(args.out) / run
        # A run that fails (in every rank alike: the same code on the same data) is recorded and the next one
        # trains, so one broken architecture does not hide the results of the others.
        try:
            report = train(run, out, args, world, rank)
        except Exception:
            report = dict(error=traceback.format_exc())
            failed += 1
            print(f"[rank {rank}] {run} failed:\n{report['error']}", file=sys.stderr, flush=True)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "log.json").write_text(json.dumps(report))
    # ContextParallelTrainer's test (cp_train.py) in the same launches: alone Trainer's reference, else split runs
    return failed + cp_train.train_all(Path(args.out) / "cp-trainer", world)


if __name__ == "__main__":
    failed = main()
    # Every result is written: leave without the interpreter's exit-time destructors, where gloo's threads can abort
    # a finished rank ("terminate called without an active exception", SIGABRT) and fail a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)
