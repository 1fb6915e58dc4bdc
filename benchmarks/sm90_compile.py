"""Static report: every Triton kernel compiled offline for sm_90 (Hopper) and sm_80 (Ampere) on the CPU; nothing runs.

    .venv/bin/python -m benchmarks.sm90_compile [--cases all|quick|NAME,...] [--arch 90,80] [--out PATH]

Drives the public ops with meta tensors through the real host wrappers (``benchmarks/lib/sm90_harness.py``: a
stand-in Triton driver, compile instead of launch), so the grids, tiles and constexprs are the production ones.
Prints one row per compiled kernel variant (registers, spilled bytes, shared memory, warps, tensor-core instructions,
compile time) and the compile time of a GLA model's first training step (chunk_gla forward + backward at B8 T2048
H16 K128 V128 bf16: every layer shares these kernels), measured cold in this fresh process with an empty Triton
cache. Writes the report to ``benchmarks/results/sm90_compile.json``. Wall times include waiting for whoever shares
the CPU; the CPU time is what an idle core would take.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from benchmarks.lib import sm90_harness as H

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="all", help="all (default), quick, or comma-separated case names")
    p.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sm90_compile.json"))
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compiling needs the real JIT
    names = H.select(args.cases)
    if "gla_train_step" in names:  # first, so that it is timed cold (a user's first step pays the start-up too)
        names = ["gla_train_step"] + [n for n in names if n != "gla_train_step"]
    report = H.compile_cases(names, [int(a) for a in args.arch.split(",")])
    report["date"] = datetime.date.today().isoformat()
    report["cpu"] = cpu_model()
    report["problems"] = list(dict.fromkeys(m for key in report["cases"] for m in H.problems(report, key)))
    report["fp32_spills"] = sorted(
        {
            f"{v['kernel']}@sm_{v['arch']} ({v['stack']} B)"
            for v in report["variants"]
            if v["stack"] and not any(report["cases"][c]["half"] for c in v["cases"])
        }
    )
    steps = {}
    for key, c in report["cases"].items():
        if c["case"] == "gla_train_step":
            steps[f"sm_{c['arch']}"] = dict(
                compile_wall_s=c["compile_s"],
                cpu_s=c["cpu_s"],
                kernels=len(c["variants"]),
                cold_process=key == f"gla_train_step@sm_{report['archs'][0]}",
            )
    report["gla_train_step"] = steps
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)

    print(f"# {report['kind']}: triton {report['triton']}, {report['machine']} ({report['cpu']}), {report['date']}")
    print(H.table(report))
    for arch, s in steps.items():
        print(
            f"GLA training step ({arch}, {'cold process' if s['cold_process'] else 'warm process'}): "
            f"{s['kernels']} kernels, {s['compile_wall_s']:.1f} s wall, {s['cpu_s']:.1f} s CPU"
        )
    errors = [f"{k}: {c['error']}" for k, c in report["cases"].items() if c["error"]]
    for m in report["problems"]:
        print("PROBLEM", m)
    if report["fp32_spills"]:
        print("spills in fp32/fp64 kernels (reported, not failures):", ", ".join(report["fp32_spills"]))
    print(
        f"{len(report['variants'])} kernel variants, {len(report['cases'])} case x target runs, "
        f"{report['total_s']:.0f} s; written to {args.out}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
