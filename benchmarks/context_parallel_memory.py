"""Context parallelism on the CPU: the longest sequence whose training step fits a fixed memory per process, one
process (the whole sequence) against N processes (``--worlds``, default 1 and 2) under
``hf_seqmodels.context_parallel`` (a 1/N slice each, gloo), and the exchanges' share of the step time.

    python -m benchmarks.context_parallel_memory [--budget-mib 1024 --hidden 256 --layers 4 --worlds 1 2]

Each measurement is a fresh launch (``python`` or ``torch.distributed.run``): a GLA causal LM (short convolutions,
fp32, batch 1, 1 thread per process) runs one training step (forward, the summed token loss over the total, backward,
gradients summed over the ranks) on its slice of a T-token sequence; the extra peak resident set of the step
(``VmHWM`` after, less the resident set before; benchmarks/lib/peak_memory.py) is the largest over the ranks. T
doubles from ``--start`` until the step no longer fits ``--budget-mib``. The exchange time is the time spent in the
all_gathers of chunk_gla's states and the convolutions' halos (forward and backward), waiting for the other rank
included; the gradient all_reduce after the step is not counted in the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.lib.peak_memory import ROOT, reset_peak, status_kb


def measure(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import hf_seqmodels
    from hf_seqmodels.kernels import context_parallel as cp

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    spent = [0.0]
    gather = cp._all_gather

    def timed_gather(x, group):
        t0 = time.perf_counter()
        out = gather(x, group)
        spent[0] += time.perf_counter() - t0
        return out

    cp._all_gather = timed_gather
    torch.manual_seed(0)
    config = hf_seqmodels.GLAConfig(
        vocab_size=256, hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=4, use_short_conv=True
    )
    model = hf_seqmodels.GLAForCausalLM(config).train()
    ids = torch.randint(3, 253, (1, args.seq))
    shift = F.pad(ids[:, 1:], (0, 1), value=-100)
    cuts = [round(args.seq * r / world) for r in range(world + 1)]
    lo, hi = cuts[rank], cuts[rank + 1]

    def step():
        spent[0] = 0.0
        t0 = time.perf_counter()
        if world > 1:
            with hf_seqmodels.context_parallel():
                logits = model(input_ids=ids[:, lo:hi], use_cache=False).logits
        else:
            logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), shift[:, lo:hi].flatten(), reduction="sum") / (args.seq - 1)
        loss.backward()
        return time.perf_counter() - t0

    before = reset_peak()
    seconds = step()
    peak_mib = (status_kb("VmHWM") - before) / 1024
    model.zero_grad(set_to_none=True)
    seconds = min(seconds, step())  # the second step: no first-call allocations in the time
    stats = torch.tensor([peak_mib, seconds, spent[0]], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(
            json.dumps(
                dict(
                    world=world,
                    seq=args.seq,
                    peak_mib=stats[0].item(),
                    step_s=stats[1].item(),
                    exchange_s=stats[2].item(),
                )
            ),
            flush=True,
        )
    sys.stdout.flush()
    os._exit(0)


def launch(world: int, seq: int, args) -> dict:
    head = (
        [sys.executable]
        if world == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    )
    cmd = [
        *head,
        "-m",
        "benchmarks.context_parallel_memory",
        "--measure",
        "--seq",
        str(seq),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--budget-mib", type=float, default=1024)
    ap.add_argument("--start", type=int, default=2048)
    ap.add_argument("--max-seq", type=int, default=1 << 17)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    args = ap.parse_args()
    if args.measure:
        return measure(args)
    print(f"GLA hidden {args.hidden}, {args.layers} layers, fp32, batch 1; budget {args.budget_mib:.0f} MiB/process")
    print(f"{'procs':>5} {'T':>7} {'peak MiB/proc':>14} {'step s':>8} {'exchange s':>11} {'share':>6}")
    longest = {}
    for world in args.worlds:
        seq = args.start
        while seq <= args.max_seq:
            r = launch(world, seq, args)
            share = r["exchange_s"] / r["step_s"]
            print(
                f"{world:>5} {seq:>7} {r['peak_mib']:>14.0f} {r['step_s']:>8.2f} {r['exchange_s']:>11.3f} "
                f"{share:>6.1%}",
                flush=True,
            )
            if r["peak_mib"] > args.budget_mib:
                break
            longest[world] = seq
            seq *= 2
    print("longest T within the budget (of the doubling series):", longest)


if __name__ == "__main__":
    main()
