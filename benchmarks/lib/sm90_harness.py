"""Compile every Triton kernel of ``hf_seqmodels.kernels`` for sm_90 (Hopper) and sm_80 (Ampere) on a machine
without a GPU; nothing runs.

How: a stand-in Triton driver reports CUDA targets (device 0 is sm_90, device 1 sm_80, so both compile in one
process), ``JITFunction.run`` is made to compile instead of launch, and the *public* ops are called with meta tensors
(no memory, no data) and ``backend="triton"``: every launch parameter, grid and constexpr is the production one,
chosen by the real host wrappers. The backward passes run through autograd as in training. Host code that reads a
meta tensor (the fused Newton solve reads its convergence statistics) gets the case's ``host_value``: 0 reads as
"converged", 1 as "not converged", which steers the wrapper to its sequential fallback kernel.

Each compiled variant is read back from its cubin with ``cuobjdump --dump-resource-usage`` (registers, stack =
spilled bytes, static shared memory) plus Triton's dynamic shared memory, and timed.

Used by ``tests/kernels/test_sm90_compile.py`` (in a subprocess: the stand-in driver and the compile-only launch
are process-wide, and the test process runs Triton in interpreter mode), ``benchmarks/sm90_compile.py`` and
``benchmarks/gla_static.py``. From the repository root:

    python -m benchmarks.lib.sm90_harness [--cases quick|all|NAME,...] [--arch 90,80] [--json PATH]

Needs triton's bundled ``ptxas`` and ``cuobjdump`` (``triton/backends/nvidia/bin``) and no ``TRITON_INTERPRET=1``.
This module imports only the standard library and torch at import time (the tests read its case list).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable

import torch

ARCHS = (90, 80)
# opt-in shared memory per block (bytes): sm_90 227 KB, sm_80 163 KB
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
SM_COUNT = {90: 132, 80: 108}
MAX_REGISTERS = 255


# -- tools -------------------------------------------------------------------------------------------------------------
def triton_bin_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "backends", "nvidia", "bin")


def find_tools() -> tuple[str | None, str | None]:
    """(ptxas, cuobjdump): triton's bundled ones (``TRITON_PTXAS_PATH`` wins for ptxas), else from PATH."""
    d = triton_bin_dir()

    def find(name, env=None):
        if env and os.environ.get(env) and os.path.exists(os.environ[env]):
            return os.environ[env]
        if d and os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
        return shutil.which(name)

    return find("ptxas", "TRITON_PTXAS_PATH"), find("cuobjdump")


def resource_usage(cubin: bytes, cuobjdump: str) -> dict:
    """REG, STACK, SHARED (static), LOCAL of the one kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run(
            [cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    return parse_resource_usage(out)


def parse_resource_usage(text: str) -> dict:
    line = next((ln for ln in text.splitlines() if "REG:" in ln), None)
    if line is None:
        raise ValueError(f"no resource usage line in cuobjdump output:\n{text}")
    fields = dict(re.findall(r"([A-Z]+):(\d+)", line))
    return {k.lower(): int(fields.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}


# -- the stand-in driver and the compile-only launch -------------------------------------------------------------------
# Triton keeps compiled kernels per device index (with the target of that device): one index per arch, for the
# whole process.
_DEVICE_ARCHS: list[int] = []


class StandInDriver:
    """An active Triton driver for GPUs that are not there: device ``i`` is a CUDA GPU of capability
    ``archs[i]``. Only what compiling needs is provided; launching is never reached (see :func:`compile_only`)."""

    def __init__(self):
        self.archs = _DEVICE_ARCHS
        self.device = 0
        self.utils = self  # get_device_properties lives on driver.utils

    def use(self, arch):
        if arch not in self.archs:
            self.archs.append(arch)
        self.device = self.archs.index(arch)

    def is_active(self):
        return True

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.archs[self.device], 32)

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_device_properties(self, device):
        arch = self.archs[device]
        return {
            "max_shared_mem": SMEM_LIMIT[arch],
            "multiprocessor_count": SM_COUNT[arch],
            "max_num_regs": 65536,
            "warpSize": 32,
        }

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver cannot time kernels (no GPU): autotuning is not supported here")

    def map_python_to_cpp_type(self, ty):
        return ty


@dataclasses.dataclass
class Variant:
    """One compiled kernel variant (kernel, target, specialization)."""

    kernel: str
    arch: int
    constexprs: str
    num_warps: int
    num_stages: int
    grid: list
    registers: int
    stack: int  # bytes of stack per thread: register spills
    local: int
    shared: int  # dynamic (Triton) + static shared memory per block, bytes
    mma: str  # wgmma / mma / -: which tensor-core instructions the PTX uses
    compile_s: float
    cpu_s: float  # CPU seconds of this process and its children (ptxas) while compiling
    cases: list = dataclasses.field(default_factory=list)
    key: str = ""


class Recorder:
    def __init__(self, cuobjdump: str):
        self.cuobjdump = cuobjdump
        self.variants: dict[str, Variant] = {}
        self.case: str | None = None
        self.used: dict[str, list] = {}  # case -> variant keys it launched

    def launched(self, fn, kernel, args, kwargs, grid, arch, wall, cpu):
        key = f"{fn.__name__}@sm_{arch}:{kernel.hash[:16]}"
        if key not in self.variants:
            md = kernel.metadata
            ru = resource_usage(kernel.asm["cubin"], self.cuobjdump)
            ptx = kernel.asm["ptx"]
            mma = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "-"
            self.variants[key] = Variant(
                kernel=fn.__name__,
                arch=arch,
                constexprs=_constexprs(fn, args, kwargs),
                num_warps=md.num_warps,
                num_stages=md.num_stages,
                grid=list(grid) if isinstance(grid, (tuple, list)) else [str(grid)],
                registers=ru["reg"],
                stack=ru["stack"],
                local=ru["local"],
                shared=md.shared + ru["shared"],
                mma=mma,
                compile_s=round(wall, 3),
                cpu_s=round(cpu, 3),
                key=key,
            )
        v = self.variants[key]
        if self.case is not None:
            if self.case not in v.cases:
                v.cases.append(self.case)
            self.used.setdefault(self.case, [])
            if key not in self.used[self.case]:
                self.used[self.case].append(key)


def _constexprs(fn, args, kwargs) -> str:
    names = {p.name for p in fn.params}
    bound = fn.signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in names})
    bound.apply_defaults()
    out = []
    for p in fn.params:
        if p.is_constexpr and p.name in bound.arguments:
            v = bound.arguments[p.name]
            out.append(f"{p.name}={getattr(v, 'name', v)}")
    return " ".join(out)


def _cpu_seconds() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


@contextlib.contextmanager
def compile_only(recorder: Recorder, host_value: list | None = None):
    """Within: the stand-in driver is active, every Triton launch compiles (for the current stand-in device) and
    returns, the ops' backend selection sends meta tensors to Triton, and host reads of meta tensors return
    ``host_value[0]``. Everything is restored on exit."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compiling needs a process without TRITON_INTERPRET=1 (set before triton was imported)")
    import triton  # noqa: F401
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    import hf_seqmodels.kernels  # noqa: F401  (imports every ops module)
    from hf_seqmodels.kernels import _dispatch

    stand_in = StandInDriver()
    host_value = [0.0] if host_value is None else host_value
    orig_run, orig_select = JITFunction.run, _dispatch.select_backend
    orig_tolist, orig_item = torch.Tensor.tolist, torch.Tensor.item

    def run(self, *args, grid, warmup, **kwargs):
        arch = stand_in.archs[stand_in.device]
        t0, c0 = time.perf_counter(), _cpu_seconds()
        kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        recorder.launched(self, kernel, args, kwargs, grid, arch, time.perf_counter() - t0, _cpu_seconds() - c0)
        return kernel

    def select_backend(op, device, backend=None):
        if torch.device(device).type == "meta":
            choice = (backend or os.environ.get("HF_SEQMODELS_BACKEND", "auto")).lower()
            return "torch" if choice == "torch" else "triton"
        return orig_select(op, device, backend)

    def tolist(self):
        return torch.full(self.shape, host_value[0]).tolist() if self.is_meta else orig_tolist(self)

    def item(self):
        return float(host_value[0]) if self.is_meta else orig_item(self)

    patched = [
        name
        for name, mod in list(sys.modules.items())
        if name.startswith("hf_seqmodels.kernels") and getattr(mod, "select_backend", None) is orig_select
    ]
    previous = driver._active  # None until something asked for the default (which fails without a GPU)
    driver.set_active(stand_in)
    JITFunction.run = run
    torch.Tensor.tolist, torch.Tensor.item = tolist, item
    for name in patched:
        sys.modules[name].select_backend = select_backend
    try:
        yield stand_in
    finally:
        for name in patched:
            sys.modules[name].select_backend = orig_select
        torch.Tensor.tolist, torch.Tensor.item = orig_tolist, orig_item
        JITFunction.run = orig_run
        driver.set_active(previous)


# -- cases: the shapes the models and benchmarks use, and the odd ones -------------------------------------------------
BF16, FP16, FP32, FP64 = torch.bfloat16, torch.float16, torch.float32, torch.float64


def meta(*shape, dtype=FP32, grad=True):
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=grad)


def backward(*outputs):
    outs = [o for o in outputs if o is not None and o.requires_grad]
    torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[], None]
    half: bool  # bf16/fp16 inputs: production kernels, spills are failures
    quick: bool = False  # in the default (CI) test set
    host_value: float = 0.0
    note: str = ""


def gla_case(op, B, T, H, K, V, dtype, g_dtype=None, state=False, grad=True, scalar_gate=False):
    """``scalar_gate``: one gate per head, ``g`` [B, T, H] (the scalar-gate kernels), else one per key."""

    def run():
        from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla

        fn = chunk_gla if op == "chunk" else fused_recurrent_gla
        q, k = meta(B, T, H, K, dtype=dtype, grad=grad), meta(B, T, H, K, dtype=dtype, grad=grad)
        gate = (B, T, H) if scalar_gate else (B, T, H, K)
        v, g = meta(B, T, H, V, dtype=dtype, grad=grad), meta(*gate, dtype=g_dtype or dtype, grad=grad)
        s0 = meta(B, H, K, V, grad=grad) if state else None
        o, final = fn(q, k, v, g, initial_state=s0, output_final_state=state, backend="triton")
        if grad:
            backward(o, final)

    return run


def scan_case(kind, B, T, D, dtype, state=False, directions=(False, True)):
    def run():
        from hf_seqmodels.kernels import block2_scan, linear_scan

        for reverse in directions:
            if kind == "diagonal":
                a, b, s0 = meta(B, T, D, dtype=dtype), meta(B, T, D, dtype=dtype), meta(B, D, dtype=dtype)
                h = linear_scan(a, b, s0 if state else None, reverse, backend="triton")
            else:
                a, b = meta(B, T, D, 2, 2, dtype=dtype), meta(B, T, D, 2, dtype=dtype)
                h = block2_scan(a, b, meta(B, D, 2, dtype=dtype) if state else None, reverse, backend="triton")
            backward(h)

    return run


def newton_case(cell, B, T, D, dtype, state=False, mask=False):
    def run():
        from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm

        fn = fused_newton_gru if cell == "gru" else fused_newton_lstm
        u, a = meta(B, T, 3, D, dtype=dtype), meta(3 if cell == "gru" else 5, D, dtype=dtype)
        h0 = (meta(B, D, dtype=dtype) if cell == "gru" else meta(B, D, 2, dtype=dtype)) if state else None
        m = meta(B, T, grad=False) if mask else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fallback cases warn by design
            h = fn(u, a, h0, m, backend="triton")
        backward(h)

    return run


def memory_case(B, T, S, D, dtype):
    def run():
        from hf_seqmodels.kernels import memory_ffn

        y = memory_ffn(
            meta(B, T, D, dtype=dtype),
            meta(B, S, D, dtype=dtype),
            meta(B, S, D, dtype=dtype),
            meta(B, S, D, dtype=dtype),
            backend="triton",
        )
        backward(y)

    return run


# The GLA training step first: a model's first step (every layer has the same shapes, so one layer's kernels are the
# model's), timed cold in a fresh process. Production: B8 T2048 H16 K128 V128 bf16 (the gpu_suite shape), the gate
# fp32 as the GLA layer computes it (logsigmoid in fp32 at least).
CASES = [
    Case(
        "gla_train_step",
        gla_case("chunk", 8, 2048, 16, 128, 128, BF16, FP32),
        True,
        True,
        note="chunk_gla fwd+bwd, B8 T2048 H16 K128 V128 bf16, g fp32, no state",
    ),
    Case(
        "gla_odd_bf16_state",
        gla_case("chunk", 3, 77, 3, 100, 36, BF16, state=True),
        True,
        True,
        note="chunk_gla fwd+bwd, K=100 V=36, few heads (smaller state tiles), initial + final state",
    ),
    Case(
        "gla_decode_bf16",
        gla_case("recurrent", 8, 1, 16, 128, 128, BF16, FP32, state=True, grad=False),
        True,
        True,
        note="fused_recurrent_gla T=1 decode step, B8 H16, state in and out",
    ),
    Case(
        "gla_recurrent_t1_bf16",
        gla_case("recurrent", 1, 1, 2, 128, 128, BF16, state=True),
        True,
        True,
        note="fused_recurrent_gla fwd+bwd at T=1",
    ),
    Case(
        "gla_scalar_train_step",
        gla_case("chunk", 8, 2048, 16, 128, 128, BF16, FP32, scalar_gate=True),
        True,
        True,
        note="chunk_gla fwd+bwd with a gate per head (g [B, T, H], the scalar-gate kernels), B8 T2048 H16 K128 V128",
    ),
    Case(
        "gla_scalar_decode_bf16",
        gla_case("recurrent", 8, 1, 16, 128, 128, BF16, FP32, state=True, scalar_gate=True),
        True,
        True,
        note="fused_recurrent_gla T=1 fwd+bwd with a gate per head, state in and out",
    ),
    Case(
        "scan_diag_bf16",
        scan_case("diagonal", 8, 2048, 1024, BF16, directions=(False,)),
        True,
        True,
        note="linear_scan fwd+bwd, B8 T2048 D1024",
    ),
    Case(
        "scan_block2_bf16",
        scan_case("block2", 8, 2048, 1024, BF16, directions=(False,)),
        True,
        True,
        note="block2_scan fwd+bwd, B8 T2048 D1024",
    ),
    Case(
        "newton_gru_bf16",
        newton_case("gru", 8, 2048, 1024, BF16),
        True,
        True,
        note="fused Newton GRU fwd+bwd, hidden 1024, B8 T2048",
    ),
    Case(
        "newton_lstm_bf16",
        newton_case("lstm", 8, 2048, 1024, BF16),
        True,
        True,
        note="fused Newton LSTM fwd+bwd, hidden 1024, B8 T2048",
    ),
    Case(
        "newton_fallback_bf16",
        lambda: (newton_case("gru", 8, 2048, 1024, BF16)(), newton_case("lstm", 8, 2048, 1024, BF16)()),
        True,
        True,
        host_value=1.0,
        note="not converged: the sequential GRU/LSTM fallback kernels",
    ),
    Case(
        "memory_ffn_bf16",
        memory_case(8, 2048, 336, 512, BF16),
        True,
        True,
        note="memory_ffn fwd+bwd, B8 T2048 S336 d512",
    ),
    # exhaustive (slow marker / --cases all)
    Case(
        "gla_state_bf16",
        gla_case("chunk", 2, 1000, 4, 128, 128, BF16, state=True),
        True,
        note="chunk_gla fwd+bwd, 8 (batch, head) pairs (smaller state tiles), initial + final state",
    ),
    Case(
        "gla_odd_fp32",
        gla_case("chunk", 3, 77, 3, 100, 36, FP32, state=True),
        False,
        note="chunk_gla fwd+bwd, K=100 V=36, fp32 (tf32x3), with state",
    ),
    Case(
        "scan_reverse_bf16",
        lambda: (
            scan_case("diagonal", 8, 2048, 1024, BF16, directions=(True,))(),
            scan_case("block2", 8, 2048, 1024, BF16, directions=(True,))(),
        ),
        True,
        note="linear_scan and block2_scan with reverse=True, fwd+bwd",
    ),
    Case(
        "gla_bench_bf16",
        gla_case("chunk", 8, 2048, 16, 128, 128, BF16),
        True,
        note="chunk_gla fwd+bwd as gpu_suite times it (g bf16)",
    ),
    Case(
        "gla_fp16_state",
        gla_case("chunk", 8, 2048, 16, 128, 128, FP16, FP32, state=True),
        True,
        note="chunk_gla fwd+bwd fp16, with state",
    ),
    Case("gla_fp32", gla_case("chunk", 2, 300, 4, 64, 128, FP32), False, note="chunk_gla fwd+bwd fp32, K64 V128"),
    Case("gla_t1_bf16", gla_case("chunk", 1, 1, 2, 128, 128, BF16, state=True), True, note="chunk_gla at T=1"),
    Case(
        "gla_scalar_odd_half_state",
        lambda: [gla_case("chunk", 3, 77, 3, 100, 36, dt, state=True, scalar_gate=True)() for dt in (BF16, FP16)],
        True,
        note="chunk_gla with a gate per head, K=100 V=36, bf16 and fp16, initial + final state",
    ),
    Case(
        "gla_scalar_odd_fp32",
        gla_case("chunk", 3, 77, 3, 100, 36, FP32, state=True, scalar_gate=True),
        False,
        note="chunk_gla with a gate per head, K=100 V=36, fp32 (tf32x3), initial + final state",
    ),
    Case("gla_odd_bf16", gla_case("chunk", 3, 77, 3, 100, 36, BF16), True, note="chunk_gla K=100 V=36 bf16"),
    Case(
        "gla_recurrent_odd_fp32",
        gla_case("recurrent", 3, 77, 3, 100, 36, FP32, state=True),
        False,
        note="fused_recurrent_gla fwd+bwd K=100 V=36",
    ),
    Case("scan_diag_fp32_state", scan_case("diagonal", 2, 1000, 96, FP32, state=True), False),
    Case("scan_block2_fp64_state", scan_case("block2", 2, 500, 64, FP64, state=True), False),
    Case("scan_diag_t1", scan_case("diagonal", 4, 1, 64, FP32, state=True), False),
    Case("newton_gru_fp32_mask", newton_case("gru", 3, 333, 80, FP32, state=True, mask=True), False),
    Case("newton_lstm_fp32_mask", newton_case("lstm", 3, 333, 80, FP32, state=True, mask=True), False),
    Case("newton_gru_fp64", newton_case("gru", 2, 500, 64, FP64, state=True, mask=True), False),
    Case("newton_lstm_fp64", newton_case("lstm", 2, 500, 64, FP64, state=True, mask=True), False),
    Case(
        "newton_t1",
        lambda: (newton_case("gru", 4, 1, 64, FP32, state=True)(), newton_case("lstm", 4, 1, 64, FP32, state=True)()),
        False,
    ),
    Case("memory_ffn_fp32", memory_case(8, 2048, 336, 512, FP32), False),
]
CASE_NAMES = [c.name for c in CASES]
QUICK = [c.name for c in CASES if c.quick]
HALF = {c.name for c in CASES if c.half}
NOT_COMPILED = {
    "sliding_window_attention": "PyTorch only (kernels/attention has no Triton kernel yet)",
    "chunk_gla fp64": "refused by the Triton wrappers by design (fp64 is served by the PyTorch path)",
}


def select(spec: str) -> list[str]:
    if spec == "quick":
        return list(QUICK)
    if spec == "all":
        return list(CASE_NAMES)
    names = [s for s in spec.split(",") if s]
    unknown = [n for n in names if n not in CASE_NAMES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; known: {CASE_NAMES}")
    return names


def compile_cases(names, archs=ARCHS, cache_dir: str | None = None) -> dict:
    """Compile the named cases for each arch (arch-major, in the given order) in this process; returns the report
    (JSON-able). A case that raises is recorded with its error, and the others still run. Triton's on-disk cache
    is ``cache_dir``, by default a fresh temporary folder (cold compiles, as on a fresh machine)."""
    ptxas, cuobjdump = find_tools()
    if ptxas is None or cuobjdump is None:
        raise RuntimeError(f"ptxas ({ptxas}) or cuobjdump ({cuobjdump}) not found")
    by_name = {c.name: c for c in CASES}
    rec = Recorder(cuobjdump)
    host_value = [0.0]
    tmp = None if cache_dir else tempfile.mkdtemp(prefix="sm90_harness_cache_")
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = cache_dir or tmp
    try:
        report = _compile(names, archs, by_name, rec, host_value, ptxas)
    finally:
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _compile(names, archs, by_name, rec, host_value, ptxas):
    t_start = time.perf_counter()
    cases = {}
    with compile_only(rec, host_value) as stand_in:
        for arch in archs:
            stand_in.use(arch)
            for name in names:
                case = by_name[name]
                rec.case, host_value[0] = f"{name}@sm_{arch}", case.host_value
                t0, c0 = time.perf_counter(), _cpu_seconds()
                error = None
                try:
                    case.run()
                except Exception as e:  # noqa: BLE001 - reported per case
                    error = f"{type(e).__name__}: {e}"[:4000]
                keys = rec.used.get(rec.case, [])
                cases[rec.case] = dict(
                    case=name,
                    arch=arch,
                    half=case.half,
                    note=case.note,
                    error=error,
                    wall_s=round(time.perf_counter() - t0, 3),
                    cpu_s=round(_cpu_seconds() - c0, 3),
                    variants=keys,
                    compile_s=round(
                        sum(rec.variants[k].compile_s for k in keys if rec.variants[k].cases[0] == rec.case), 3
                    ),
                )
        rec.case = None
    import triton

    return dict(
        kind="static, compiled offline on the CPU, nothing ran",
        triton=triton.__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        machine=f"{os.cpu_count()}-core {platform.machine()} CPU",
        ptxas=ptxas,
        archs=list(archs),
        smem_limit={f"sm_{a}": SMEM_LIMIT[a] for a in archs},
        total_s=round(time.perf_counter() - t_start, 3),
        cases=cases,
        variants=[dataclasses.asdict(v) for v in rec.variants.values()],
        not_compiled=NOT_COMPILED,
    )


def problems(report: dict, case_key: str) -> list[str]:
    """What is wrong with one case of a report: its error; shared memory over the target's limit; registers over
    255; spills (stack bytes) in a bf16/fp16 case."""
    c = report["cases"][case_key]
    out = [f"{case_key}: {c['error']}"] if c["error"] else []
    variants = {v["key"]: v for v in report["variants"]}
    for key in c["variants"]:
        v = variants[key]
        if v["shared"] > SMEM_LIMIT[v["arch"]]:
            out.append(f"{key}: {v['shared']} B shared memory > {SMEM_LIMIT[v['arch']]} B ({v['constexprs']})")
        if v["registers"] > MAX_REGISTERS:
            out.append(f"{key}: {v['registers']} registers")
        if c["half"] and (v["stack"] or v["local"]):
            out.append(
                f"{key}: spills ({v['stack']} B stack, {v['local']} B local; {v['registers']} registers; "
                f"{v['constexprs']})"
            )
    return out


def table(report: dict) -> str:
    rows = [("kernel", "target", "case (first)", "regs", "spill B", "smem KB", "warps", "mma", "compile s")]
    for v in sorted(report["variants"], key=lambda v: (-v["arch"], v["cases"][0] if v["cases"] else "", v["kernel"])):
        rows.append(
            (
                v["kernel"],
                f"sm_{v['arch']}",
                v["cases"][0].split("@")[0] if v["cases"] else "-",
                str(v["registers"]),
                str(max(v["stack"], v["local"])),
                f"{v['shared'] / 1024:.1f}",
                str(v["num_warps"]),
                v["mma"],
                f"{v['compile_s']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="quick", help="quick, all, or a comma-separated list of case names")
    p.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no table")
    args = p.parse_args(argv)
    report = compile_cases(select(args.cases), [int(a) for a in args.arch.split(",")])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if not args.quiet:
        print(table(report))
    bad = [msg for key in report["cases"] for msg in problems(report, key)]
    for msg in bad:
        print("PROBLEM", msg, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    sys.exit(main())
