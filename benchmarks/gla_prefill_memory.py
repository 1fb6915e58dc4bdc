"""Peak memory of a forward-only ``chunk_gla`` (torch path, CPU) against the size of its inputs.

Prefill without gradients streams blocks of chunks carrying the state (``kernels/gla/chunk_torch.py``,
``STREAM_ELEMENTS``); the full path (what a forward that records a graph runs) builds every chunk's temporaries at
once. Each measurement runs in a fresh process: inputs q, k, v, g ``[1, T, H, K]`` fp32 are allocated, the peak
resident set (VmHWM) is reset (``/proc/self/clear_refs``), the op runs under ``torch.no_grad()``, and the new peak
minus the resident set before the op is the op's extra memory (it includes the output ``o``, 1/4 of the inputs).

    python -m benchmarks.gla_prefill_memory                   # T = 16k .. 262k, streamed; full path up to 131k
    python -m benchmarks.gla_prefill_memory --full-max-T 262144

Writes ``benchmarks/results/gla_prefill_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.lib.peak_memory import reset_peak, run_fresh, status_kb

RESULTS = Path(__file__).resolve().parent / "results" / "gla_prefill_memory.json"


def _one(T: int, mode: str, H: int, K: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from hf_seqmodels.kernels.gla.chunk_torch import chunk_gla_torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # warm up (library code, allocator) on a tiny input before measuring
    small = [torch.randn(1, 128, H, K) for _ in range(4)]
    chunk_gla_torch(*small[:3], -small[3].abs(), K**-0.5)
    q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
    g = torch.randn(1, T, H, K)
    g.copy_(F.logsigmoid(g)).div_(16)
    del small
    input_bytes = sum(t.numel() * t.element_size() for t in (q, k, v, g))
    before = reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        o, _ = chunk_gla_torch(q, k, v, g, K**-0.5, None, True, stream_elements=None if mode == "streamed" else 1 << 62)
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    out_bytes = o.numel() * o.element_size()
    extra = (peak - before) * 1024
    return {
        "T": T,
        "H": H,
        "K": K,
        "V": K,
        "mode": mode,
        "input_bytes": input_bytes,
        "output_bytes": out_bytes,
        "extra_peak_bytes": extra,
        "extra_peak_over_input": extra / input_bytes,
        "extra_beyond_output_bytes": extra - out_bytes,
        "seconds": seconds,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="*", default=[16384, 65536, 131072, 262144])
    p.add_argument("--full-max-T", type=int, default=131072, help="largest T for the full (unstreamed) path")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="K = V")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("T", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(_one(int(a.one[0]), a.one[1], a.heads, a.dim, a.threads)))
        return
    rows = []
    for T in a.T:
        for mode in ("streamed", "full"):
            if mode == "full" and T > a.full_max_T:
                continue
            row = run_fresh(
                "benchmarks.gla_prefill_memory",
                "--one",
                T,
                mode,
                "--heads",
                a.heads,
                "--dim",
                a.dim,
                "--threads",
                a.threads,
            )
            rows.append(row)
            print(
                f"T={T:>7} {mode:>8}: inputs {row['input_bytes'] / 2**20:8.1f} MiB  extra peak "
                f"{row['extra_peak_bytes'] / 2**20:8.1f} MiB ({row['extra_peak_over_input']:.2f}x inputs; output "
                f"{row['output_bytes'] / 2**20:.1f} MiB)  {row['seconds']:.1f} s",
                flush=True,
            )
    import torch

    meta = {
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
        "torch": torch.__version__,
        "threads": a.threads,
        "dtype": "float32",
        "batch": 1,
        "measure": "VmHWM after the op minus VmRSS before it (peak reset via /proc/self/clear_refs), "
        "fresh process each",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
