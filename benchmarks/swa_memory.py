"""Peak memory of sliding-window attention (torch path, CPU, forward + backward) against the window.

The blocked kernel (``kernels/attention/swa_torch.py``) scores ``w x 2w`` pairs per block of ``w`` queries, so its
extra memory is O(T x window) and stops growing once the window covers the sequence (the window is capped at the
key count). Each measurement runs in a fresh process: q, k, v ``[1, T, H, D]`` fp32 with gradients, the peak
resident set (VmHWM) reset, forward + backward of ``o.sum()``; the new peak minus the resident set before is the
op's extra memory.

    python -m benchmarks.swa_memory          # T 8192, windows 64 .. 10**9

Writes ``benchmarks/results/swa_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from benchmarks.lib.peak_memory import reset_peak, run_fresh, status_kb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "swa_memory.json"


def _one(T: int, window: int, H: int, D: int) -> dict:
    import torch

    from hf_seqmodels.kernels import sliding_window_attention

    torch.set_num_threads(1)
    small = [torch.randn(1, 64, H, D, requires_grad=True) for _ in range(3)]
    sliding_window_attention(*small, window=8).sum().backward()  # warm up library code and the allocator
    q, k, v = (torch.randn(1, T, H, D, requires_grad=True) for _ in range(3))
    before = reset_peak()
    start = time.perf_counter()
    sliding_window_attention(q, k, v, window=window).sum().backward()
    seconds = time.perf_counter() - start
    extra = (status_kb("VmHWM") - before) / 1024
    return {
        "T": T,
        "window": window,
        "H": H,
        "D": D,
        "extra_peak_mib": round(extra, 1),
        "inputs_mib": round(3 * T * H * D * 4 / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--windows", type=int, nargs="+", default=[64, 256, 1024, 4096, 8192, 10**9])
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    H, D = 4, 64
    if args.one:
        print(json.dumps(_one(args.one[0], args.one[1], H, D)))
        return
    rows = []
    for w in args.windows:
        rows.append(run_fresh("benchmarks.swa_memory", "--one", args.T, w))
        print(rows[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, 1 thread", "rows": rows},
            indent=1,
        )
    )
    print("| window | extra peak (MiB) | inputs (MiB) | s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['window']} | {r['extra_peak_mib']} | {r['inputs_mib']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
