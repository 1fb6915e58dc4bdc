"""What every part of the GPU suite shares: the section registry, tables, timers, and the child processes (the fla
warm-up and the model steps run ``python -m benchmarks.gpu_suite --child ...`` from the repository root)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root, where ``benchmarks`` imports from
ENTRY = "benchmarks.gpu_suite"
#: the run order: the checks, the launch coverage of those checks, then the timings. Fixed here rather than by the
#: order the parts happen to be imported in (a test process imports them in its own order).
RUN_ORDER = (
    "gla_check",
    "scan_check",
    "pararnn_check",
    "memory_check",
    "packed_check",
    "coverage",
    "gla_bench",
    "pararnn_bench",
    "model_bench",
)
SECTIONS: dict = {}  # name -> dict(fn, est_s, tiny_est_s), in RUN_ORDER
BF16, FP32, FP64 = torch.bfloat16, torch.float32, torch.float64


def section(name, est_s, tiny_est_s):
    """Register a section with its estimated wall time on an H100/H200 (``est_s``, see GPU.md for what each rests
    on) and in the CPU smoke mode (``tiny_est_s``)."""

    if name not in RUN_ORDER:
        raise ValueError(f"section {name!r} has no place in RUN_ORDER {RUN_ORDER}")

    def register(fn):
        SECTIONS[name] = dict(fn=fn, est_s=est_s, tiny_est_s=tiny_est_s)
        ordered = sorted(SECTIONS.items(), key=lambda item: RUN_ORDER.index(item[0]))
        SECTIONS.clear()
        SECTIONS.update(ordered)
        return fn

    return register


def print_table(title, rows, columns):
    print(f"\n== {title}")
    widths = [max([len(c)] + [len(_fmt(r.get(c))) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    sys.stdout.flush()


def _fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.3f}"
    return str(x)


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def remaining(args):
    return args.deadline - time.monotonic()


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def bench(args, fn, grads=()):
    """Median ms of ``fn``: triton's do_bench on the GPU (25 ms warm-up, 100 ms of repetitions), else a wall clock."""
    if args.device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(grads), return_mode="median")
    return time_capped(args, fn, reps=args.cpu_reps, budget_s=10.0, grads=grads)


def time_capped(args, fn, reps=3, budget_s=4.0, grads=()):
    """Median ms of up to ``reps`` runs after one warm-up, stopping once ``budget_s`` is spent (slow loops)."""
    fn()
    sync(args)
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < reps and (not times or time.perf_counter() < t_end):
        for x in grads:
            x.grad = None
        t0 = time.perf_counter()
        fn()
        sync(args)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_mib(args, fn):
    if args.device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def spawn_child(args, kind, out, log, env, extra=()):
    """Start a child process of the suite (``kind``: "warmup" or "model") that writes its report to ``out`` and its
    output to the open file ``log``; it gets the suite's shapes and device."""
    cmd = [
        sys.executable,
        "-m",
        ENTRY,
        "--child",
        kind,
        "--child-out",
        str(out),
        "--child-spawned",
        repr(time.time()),
        "--device",
        args.device,
        "--gla-shapes",
        args.gla_shapes_str,
        "--model-shapes",
        args.model_shapes_str,
        "--model-steps",
        str(args.model_steps),
        *extra,
    ]
    if args.tiny:
        cmd.append("--tiny")
    if args.fla_on_cpu:
        cmd.append("--fla-on-cpu")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def write_atomic(path, obj):
    """A child's report, replaced whole: the suite may kill a child at any moment and read what it last wrote."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    tmp.replace(path)


def read_report(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def log_tail(path, n=1500):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""
