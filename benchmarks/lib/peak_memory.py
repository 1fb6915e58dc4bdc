"""Peak memory of one measured step, the way the memory benchmarks take it (Linux): each measurement runs in a fresh
process (:func:`run_fresh`), which resets its peak resident set to the current one (:func:`reset_peak`) just before
the step and reads ``VmHWM`` after it (:func:`status_kb`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root, where ``benchmarks`` imports from


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak (``VmHWM``) to the current resident set; returns that resident set in kB."""
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return before


def run_fresh(module: str, *args) -> dict:
    """Run ``python -m module *args`` from the repository root in a fresh process; its last stdout line is a JSON
    object (the measurement), returned as a dict."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
