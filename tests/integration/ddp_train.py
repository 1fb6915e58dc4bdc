"""Short Trainer fine-tunes, one per config, that ``test_ddp.py`` runs twice on the same global batches: alone (one
process, the whole batch) and under ``torchrun --nproc_per_node 2`` (gloo on the CPU, half the batch per process).
One launch trains every config in turn, so process start-up and the rendezvous are paid once.

    python ddp_train.py --out DIR [--configs gla-conv-tied,liger --steps 5 --global-batch 8]
    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_train.py --out DIR [...]

Data order is fixed (sequential sampler; accelerate hands process i the batches i, i+2, ... of size batch/2, so a
global step covers the same examples as one process's step). SGD, not Adam: Adam's update is blind to the scale of
the gradient, so gradients summed instead of averaged across processes would go unnoticed. For each config rank 0
writes ``DIR/<config>/log.json`` (losses, grad norms; or the error that stopped that config) and the final weights
(``DIR/<config>/final/``).

A name ``<config>+gradient-noise`` trains that config with :class:`hf_seqmodels.GradientNoiseCallback`, and
``<config>+sorted`` with :class:`hf_seqmodels.SortedDepthCallback` (one sampled depth per step; DDP with
``find_unused_parameters``); there every rank also writes its own parameters
(``DIR/<name>/params_rank<r>.safetensors``), to check that the ranks, each drawing its own noise or depth, still hold
equal replicas.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from conftest import TRAIN_CONFIGS, train_config_for  # noqa: E402
from integration_utils import ByteBlocks, build_lm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from hf_seqmodels import GradientNoiseCallback, SortedDepthCallback  # noqa: E402

#: run-name suffix -> the callbacks of that run
TECHNIQUES = {"+gradient-noise": lambda: [GradientNoiseCallback(eta=1e-3)], "+sorted": lambda: [SortedDepthCallback()]}
#: the runs a launch makes by default: every TRAIN_CONFIGS entry, and one per technique
RUNS = [*TRAIN_CONFIGS, *("gla-conv-tied" + t for t in TECHNIQUES)]


def split_run(name: str) -> tuple[str, str]:
    """(config name, technique suffix or "")"""
    for suffix in TECHNIQUES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def train(name: str, out: Path, args, world: int, rank: int) -> dict:
    torch.manual_seed(args.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    config_name, technique = split_run(name)
    config = train_config_for(config_name)
    config.initializer_range = 0.02
    model = build_lm(config).train()
    data = ByteBlocks(args.block, args.steps * args.global_batch)
    targs = TrainingArguments(
        output_dir=str(out / "run"),
        max_steps=args.steps,
        per_device_train_batch_size=args.global_batch // world,
        optim="sgd",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1e9,  # the norm is computed and logged, never clips
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        ddp_find_unused_parameters=technique == "+sorted" or None,  # a shallow step leaves the deeper layers unused
        train_sampling_strategy="sequential",
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        label_names=["labels"],
    )
    callbacks = TECHNIQUES[technique]() if technique else []
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=callbacks)
    trainer.train()
    if technique:
        out.mkdir(parents=True, exist_ok=True)
        params = {k: v.detach().contiguous() for k, v in trainer.model.named_parameters()}
        save_file(params, str(out / f"params_rank{rank}.safetensors"))
    trainer.save_model(str(out / "final"))  # every rank calls it; only the main process writes
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return dict(
        world_size=targs.world_size,
        per_device=targs.per_device_train_batch_size,
        losses=[h["loss"] for h in logs],
        grad_norms=[h.get("grad_norm") for h in logs],
    )


def main() -> int:
    """Train every config in turn; returns how many failed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=",".join(RUNS), help="comma-separated names from RUNS")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    names = args.configs.split(",")
    unknown = [n for n in names if split_run(n)[0] not in TRAIN_CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; expected names from {RUNS}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by the world size {world}")
    failed = 0
    for name in names:
        out = Path(args.out) / name
        # A config that fails (in every rank alike: the same code on the same data) is recorded and the next one
        # trains, so one broken architecture does not hide the results of the others.
        try:
            report = train(name, out, args, world, rank)
        except Exception:
            report = dict(error=traceback.format_exc())
            failed += 1
            print(f"[rank {rank}] {name} failed:\n{report['error']}", file=sys.stderr, flush=True)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "log.json").write_text(json.dumps(report))
    return failed


if __name__ == "__main__":
    failed = main()
    # Every result is written: leave without the interpreter's exit-time destructors, where gloo's threads can abort
    # a finished rank ("terminate called without an active exception", SIGABRT) and fail a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)
