"""The GPU suite's coverage section: every Triton kernel defined in ``hf_seqmodels.kernels`` was launched by one of
the checks (``benchmarks.gpu.checks``) that ran before it. A ledger wrapped around Triton's launch records, per
kernel, the section that first launched it; the kernels are found by walking the package.
"""

from __future__ import annotations

from benchmarks.gpu.common import print_table, section

KERNEL_LAUNCHES: dict = {}  # "module.function" -> the section that first launched it
_CURRENT = {"section": None}  # set by the suite before each section: set_section
_PATCHED: list = []


def install_launch_ledger():
    """Record every Triton kernel launch (compiled or interpreted) until :func:`remove_launch_ledger`."""
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    for cls in classes:
        orig = cls.__dict__["run"]

        def run(self, *a, _orig=orig, **k):
            fn = getattr(self, "fn", None)
            if fn is not None:
                KERNEL_LAUNCHES.setdefault(f"{fn.__module__}.{fn.__qualname__}", _CURRENT["section"])
            return _orig(self, *a, **k)

        cls.run = run
        _PATCHED.append((cls, orig))


def set_section(name):
    """Launches from now on are credited to the section ``name``."""
    _CURRENT["section"] = name


def remove_launch_ledger():
    while _PATCHED:
        cls, orig = _PATCHED.pop()
        cls.run = orig


def triton_kernels():
    """``{"module.function": python function}`` of every Triton kernel defined in ``hf_seqmodels.kernels``: the
    @triton.jit functions that some host code launches (``name[grid](...)``) and no jit function calls (device
    helpers, and cell functions passed to a kernel as a constexpr argument, are never launched)."""
    import importlib
    import inspect
    import pkgutil
    import re

    from triton.runtime.jit import KernelInterface

    import hf_seqmodels.kernels as pkg

    jit, sources = {}, []
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        module = importlib.import_module(info.name)
        sources.append(inspect.getsource(module))
        for obj in vars(module).values():
            if not isinstance(obj, KernelInterface):
                continue
            fn = obj
            while fn is not None and not inspect.isfunction(fn):  # unwrap autotuners / heuristics
                fn = getattr(fn, "fn", None)
            if fn is not None and fn.__module__ == module.__name__:
                jit[f"{fn.__module__}.{fn.__qualname__}"] = fn
    referenced = set()
    for fn in jit.values():
        referenced.update(fn.__code__.co_names)
    launched = {name for src in sources for name in re.findall(r"\b(\w+)\[[^\]]*\]\(", src)}
    return {key: fn for key, fn in jit.items() if fn.__name__ not in referenced and fn.__name__ in launched}


@section("coverage", est_s=1, tiny_est_s=1)
def coverage(args):
    kernels = triton_kernels()
    rows = [dict(kernel=k, launched_by=KERNEL_LAUNCHES.get(k)) for k in sorted(kernels)]
    missing = [r["kernel"] for r in rows if r["launched_by"] is None]
    before = args.sections[: args.sections.index("coverage")]
    checks = [s for s in CHECK_SECTIONS if s in before]
    print_table(
        f"Triton kernels in hf_seqmodels.kernels launched by the checks ({', '.join(checks) or 'none ran'})",
        rows,
        ["kernel", "launched_by"],
    )
    if missing:
        print(f"NOT COVERED by a check: {missing}")
    return {"ok": bool(kernels) and not missing, "rows": rows, "missing": missing, "checks_run": checks}


CHECK_SECTIONS = ("gla_check", "scan_check", "pararnn_check", "memory_check", "packed_check")
