"""One prepared run for a GPU machine: check every Triton kernel against the PyTorch path, time the kernels beside
the peers a user would pick instead (fla ``chunk_gla``, SDPA, cuDNN GRU/LSTM, a sequential loop), then a GLA-340M and
a Llama-374M training step, all in one call that fits 8 minutes on an H100/H200 (see ``benchmarks/GPU.md``).

The one device call (the wheels once beforehand, here, in the repository root; ``.whl`` is git-ignored via
``.git/info/exclude``)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \\
        flash-linear-attention==0.6.0 fla-core==0.6.0

    # the device run: carry [".whl"], timeout_s 540, this command (one line in GPU.md)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \\
    python3 -m pip install -q --no-deps --no-build-isolation -e . || exit; set -o pipefail; \\
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT 2>&1 | tee $OUT/gpu_suite.log

Both fla wheels are pure Python; their other needs (transformers>=5.6.2,<6, einops, torch>=2.7, triton>=3.3) are in
the device image. Without the wheels the suite still runs and reports fla's column as skipped, with the reason.

Sections, in order (``--sections`` picks some; each prints its table and how long it took):

    gla_check      chunk_gla and fused_recurrent_gla fwd+bwd (Triton) vs the PyTorch path in fp64
    scan_check     linear_scan and block2_scan, forward and reverse, fwd+bwd, vs the PyTorch path in fp64
    pararnn_check  fused Newton GRU/LSTM (+ their sequential fallback kernels) and newton_solve on the Triton scans
    memory_check   memory_ffn fwd+bwd vs the PyTorch path in fp64, and its time beside the PyTorch (bmm) path
    packed_check   packed sequences (cu_seqlens): GLA, both scans, ParaGRU/ParaLSTM layers
    coverage       every Triton kernel defined in hf_seqmodels.kernels was launched by the sections above
    gla_bench      chunk_gla beside fla chunk_gla and causal SDPA (fwd, fwd+bwd, memory); cold compile of both
    pararnn_bench  ParaGRU/ParaLSTM layer: fused vs generic Newton vs cuDNN GRU/LSTM vs a step-by-step loop
    model_bench    GLA-340M and Llama-374M training step (bf16 autocast, AdamW): tokens/s, cold first step, OOM rows

``--budget-s`` (default 420) bounds the whole run: a section starts only if half its estimate is left, the cold
processes (fla warm-up, model steps) are killed at the deadline, and ``gpu_suite.json`` is rewritten after every
section, so a run cut short keeps what it measured. ``--device cpu --tiny`` runs every section on tiny shapes through
the same code (Triton kernels in the interpreter, ``HF_SEQMODELS_BACKEND=triton``); ``tests/test_gpu_suite.py`` runs
it. Writes ``gpu_suite.json`` and ``gpu_suite.png`` to ``--out`` (default ``$OUT``, else ``./out``); exit status 1
when a check failed.

A section is a function ``(args) -> dict`` registered with ``@section(name, est_s, tiny_est_s)``; it returns
``{"ok": bool, "rows": [dict, ...]}`` and may add ``"plot": fn(ax_list)`` and ``"panels": n``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

SECTIONS: dict = {}
BF16, FP32, FP64 = torch.bfloat16, torch.float32, torch.float64
OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def section(name, est_s, tiny_est_s):
    """Register a section with its estimated wall time on an H100/H200 (``est_s``, see GPU.md for what each rests
    on) and in the CPU smoke mode (``tiny_est_s``)."""

    def register(fn):
        SECTIONS[name] = dict(fn=fn, est_s=est_s, tiny_est_s=tiny_est_s)
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


def _dt(dtype):
    return str(dtype).replace("torch.", "")


def _remaining(args):
    return args.deadline - time.monotonic()


def _sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def _bench(args, fn, grads=()):
    """Median ms of ``fn``: triton's do_bench on the GPU (25 ms warm-up, 100 ms of repetitions), else a wall clock."""
    if args.device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(grads), return_mode="median")
    return _time_capped(args, fn, reps=args.cpu_reps, budget_s=10.0, grads=grads)


def _time_capped(args, fn, reps=3, budget_s=4.0, grads=()):
    """Median ms of up to ``reps`` runs after one warm-up, stopping once ``budget_s`` is spent (slow loops)."""
    fn()
    _sync(args)
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < reps and (not times or time.perf_counter() < t_end):
        for x in grads:
            x.grad = None
        t0 = time.perf_counter()
        fn()
        _sync(args)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _peak_mib(args, fn):
    if args.device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _rel_err(got, ref, scale=None):
    """max |got - ref| / max |ref| (or / ``scale``); inf when either holds a NaN (so that no max() can hide it)."""
    scale = float(ref.abs().max()) if scale is None else scale
    err = float((got.double() - ref.double()).abs().max()) / max(scale, 1e-30)
    return err if math.isfinite(err) else math.inf


def _grads(fn, inputs, weights):
    """Outputs of ``fn(*leaves)`` (a tensor or a tuple) and the gradients of ``sum(out * weight)`` w.r.t. every
    tensor input that is not None, on fresh leaf copies of ``inputs``."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    sum(((o.double() * w).sum() for o, w in zip(outs, weights)), torch.zeros((), dtype=FP64, device=outs[0].device)
        ).backward()
    return [o.detach() for o in outs] + [x.grad for x in leaves if x is not None]


def _check_row(row, names, got, ref, tol, scales=None):
    scales = scales or {}
    errs = {n: _rel_err(a, b, scales.get(n)) for n, a, b in zip(names, got, ref)}
    worst = max(errs.values())
    row.update(errs, worst=worst, ok=bool(worst < tol))  # NaN compares False: not ok
    return row


def _guarded(row, fn):
    """Run ``fn(row)``; an exception marks the row failed (with the error) instead of ending the section."""
    try:
        fn(row)
    except Exception as e:  # report and carry on
        traceback.print_exc()
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
    return row


@contextlib.contextmanager
def _backend_env(value):
    old = os.environ.get("HF_SEQMODELS_BACKEND")
    os.environ["HF_SEQMODELS_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_SEQMODELS_BACKEND", None)
        else:
            os.environ["HF_SEQMODELS_BACKEND"] = old


# ---------------------------------------------------------------------------------------------------------------
# GLA: correctness

GLA_CHECK_CASES = [  # B, T, H, K, V, dtype of q/k/v, dtype of g, gates
    (2, 1000, 4, 128, 128, BF16, BF16, "normal"),  # the gla_bench head shape
    (2, 333, 4, 128, 256, BF16, FP32, "normal"),  # GLA-340M's heads (K128 V256), g fp32 as the GLA layer makes it
    (3, 77, 3, 100, 36, FP32, FP32, "steep"),  # fp32 (tf32x3 dots), padded odd head dims, extreme gates
    (1, 1, 2, 128, 128, BF16, BF16, "normal"),
]
GLA_TINY_CASES = [
    (1, 20, 2, 16, 16, FP32, FP32, "normal"),
    (2, 9, 1, 24, 8, FP32, FP32, "steep"),
    (1, 1, 2, 16, 16, BF16, FP32, "normal"),
]
_TOL = {FP32: 1e-4, BF16: 3e-2, FP64: 1e-10}


def _gla_inputs(B, T, H, K, V, dtype, g_dtype=None, gates="normal", device="cuda", state=True):
    import torch.nn.functional as F

    q = torch.randn(B, T, H, K, device=device, dtype=dtype)
    k = torch.randn(B, T, H, K, device=device, dtype=dtype)
    v = torch.randn(B, T, H, V, device=device, dtype=dtype)
    if gates == "steep":  # half the key dims forget everything each step, half almost nothing
        steep = torch.arange(K, device=device) % 2 == 0
        shape = (B, T, H, K)
        g = torch.where(steep, -30 - 10 * torch.rand(shape, device=device), -1e-2 * torch.rand(shape, device=device))
    else:
        g = F.logsigmoid(torch.randn(B, T, H, K, device=device)) / 16
    s0 = torch.randn(B, H, K, V, device=device) if state else None
    return q, k, v, g.to(g_dtype or dtype), s0


def _gla_op(op, backend, cu_seqlens=None):
    def fn(q, k, v, g, s0):
        return op(q, k, v, g, q.shape[-1] ** -0.5, s0, True, backend=backend, cu_seqlens=cu_seqlens)

    return fn


_GLA_NAMES = ("o", "state", "dq", "dk", "dv", "dg", "dh0")


def gla_check_rows(cases, device):
    from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla

    rows, ok = [], True
    for B, T, H, K, V, dtype, g_dtype, gates in cases:
        inputs = _gla_inputs(B, T, H, K, V, dtype, g_dtype, gates, device)
        weights = (torch.randn(B, T, H, V, device=device), torch.randn(B, H, K, V, device=device))
        ref = _grads(_gla_op(chunk_gla, "torch"), [x.double() for x in inputs], weights)
        q, k = inputs[0].double(), inputs[1].double()
        # dg = q*dq - k*dk summed backwards: its error is relative to those products, not to dg itself
        dg_scale = max(float(ref[5].abs().max()), float((q * ref[2]).abs().max()), float((k * ref[3]).abs().max()))
        for op_name, op in (("chunk", chunk_gla), ("recurrent", fused_recurrent_gla)):
            row = dict(op=op_name, shape=f"B{B} T{T} H{H} K{K} V{V}", dtype=_dt(dtype), g=_dt(g_dtype), gates=gates)
            _guarded(row, lambda r: _check_row(r, _GLA_NAMES, _grads(_gla_op(op, "triton"), inputs, weights), ref,
                                               _TOL[dtype], {"dg": dg_scale}))
            ok &= bool(row["ok"])
            rows.append(row)
    return rows, ok


@section("gla_check", est_s=40, tiny_est_s=25)
def gla_check(args):
    rows, ok = gla_check_rows(GLA_TINY_CASES if args.tiny else GLA_CHECK_CASES, args.device)
    print_table("GLA Triton vs PyTorch path in fp64 (max abs error / max |ref|; fwd, final state and all gradients)",
                rows, ["op", "shape", "dtype", "g", "gates", *_GLA_NAMES, "ok", "error"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Scans: correctness

SCAN_CHECK_CASES = [  # B, T, D, dtype, initial state, reverse
    (2, 1000, 96, FP32, True, False),
    (2, 1000, 96, FP32, True, True),
    (3, 2048, 256, BF16, False, False),  # the Newton solver's production shape class
    (4, 1, 64, FP32, True, True),
]
SCAN_TINY_CASES = [(1, 13, 5, FP32, True, False), (2, 9, 3, FP32, True, True), (1, 1, 4, FP32, True, False),
                   (1, 17, 6, BF16, False, False)]
_SCAN_TOL = {FP32: 1e-4, BF16: 3e-2}


def _scan_inputs(kind, B, T, D, dtype, h0, device):
    if kind == "diagonal":  # any real a: negative, zero, slightly above one
        a = torch.empty(B, T, D, device=device).uniform_(-1.05, 1.05)
        a = a.masked_fill(torch.rand(B, T, D, device=device) < 0.05, 0.0)
        b = torch.randn(B, T, D, device=device)
        s0 = torch.randn(B, D, device=device) if h0 else None
    else:  # 2x2 blocks, Frobenius norm below ~1.1
        a = 0.55 * torch.tanh(torch.randn(B, T, D, 2, 2, device=device))
        b = torch.randn(B, T, D, 2, device=device)
        s0 = torch.randn(B, D, 2, device=device) if h0 else None
    return [a.to(dtype), b.to(dtype), None if s0 is None else s0.to(dtype)]


def scan_check_rows(cases, device):
    from hf_seqmodels.kernels import block2_scan, linear_scan

    rows, ok = [], True
    for kind, op in (("diagonal", linear_scan), ("block2", block2_scan)):
        for B, T, D, dtype, h0, reverse in cases:
            row = dict(op=op.__name__, shape=f"B{B} T{T} D{D}", dtype=_dt(dtype), h0=h0, reverse=reverse)

            def check(r):
                inputs = _scan_inputs(kind, B, T, D, dtype, h0, device)
                weight = torch.randn(inputs[1].shape, dtype=FP64, device=device)

                def fn(backend):
                    return lambda a, b, s0: op(a, b, s0, reverse=reverse, backend=backend)

                ref = _grads(fn("torch"), [x.double() if x is not None else None for x in inputs], [weight])
                got = _grads(fn("triton"), inputs, [weight])
                _check_row(r, ["h", "da", "db"] + (["dh0"] if h0 else []), got, ref, _SCAN_TOL[dtype])

            _guarded(row, check)
            ok &= bool(row["ok"])
            rows.append(row)
    return rows, ok


@section("scan_check", est_s=12, tiny_est_s=8)
def scan_check(args):
    rows, ok = scan_check_rows(SCAN_TINY_CASES if args.tiny else SCAN_CHECK_CASES, args.device)
    print_table("Scans: Triton vs PyTorch path in fp64 (max abs error / max |ref|)", rows,
                ["op", "shape", "dtype", "h0", "reverse", "h", "da", "db", "dh0", "ok", "error"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# ParaRNN: the fused Newton kernels and newton_solve on the Triton scans (values and gradients)

PARARNN_CHECK_CASES = [  # B, T, D, dtype, h0, mask
    (2, 1000, 96, FP32, True, False),
    (3, 333, 80, FP32, True, True),
    (2, 500, 64, FP64, True, True),
    (2, 2048, 256, BF16, False, False),
    (4, 1, 64, FP32, True, False),
]
PARARNN_TINY_CASES = [(2, 9, 5, FP32, True, True)]  # for a run in the Triton interpreter
NEWTON_GENERIC_CASES = [(2, 700, 96, FP32, True), (3, 1, 32, FP32, True)]  # B, T, D, dtype, h0
NEWTON_GENERIC_TINY_CASES = [(2, 11, 5, FP32, True)]
_PARARNN_TOL = {FP32: 1e-4, FP64: 1e-10, BF16: 3e-2}


def _pararnn_inputs(cell, B, T, D, dtype, h0, mask, device):
    u = torch.randn(B, T, 3, D, device=device)
    a = torch.randn(3 if cell == "gru" else 5, D, device=device)
    a = a * (0.5 / a.norm(dim=-1, keepdim=True))  # the paper's init: each row's norm 0.5
    s0 = torch.randn(B, D, *(() if cell == "gru" else (2,)), device=device) if h0 else None
    m = None
    if mask:
        m = torch.ones(B, T, device=device)
        m[0, : T // 3] = 0
    return [x.to(dtype) if x is not None else None for x in (u, a, s0)] + [m]


def _pararnn_grads(fn, inputs, weight):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs[:3]]
    h = fn(*leaves, inputs[3])
    (h.double() * weight).sum().backward()
    return [h.detach()] + [x.grad for x in leaves if x is not None]


def pararnn_check_rows(cases, device="cuda", generic_cases=()):
    """Fused Triton solve (values, du, da, dh0) vs the PyTorch path in fp64 on the same inputs, then the fallback
    (max_iter=0: the sequential kernel), the cells' dispatch, and ``newton_solve`` with the Triton scans (forward
    Newton sweeps and the adjoint reverse scan) on ``generic_cases``. Returns (rows, ok)."""
    import warnings

    from hf_seqmodels.kernels import newton_solve
    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm
    from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

    rows, ok = [], True
    for cell, fn, cls in (("gru", fused_newton_gru, ParaGRUCell), ("lstm", fused_newton_lstm, ParaLSTMCell)):
        for B, T, D, dtype, h0, mask in cases:
            row = dict(solver="fused", cell=cell, shape=f"B{B} T{T} D{D}", dtype=_dt(dtype), h0=h0, mask=mask)

            def check(r):
                inputs = _pararnn_inputs(cell, B, T, D, dtype, h0, mask, device)
                weight = torch.randn(B, T, D, *(() if cell == "gru" else (2,)), dtype=FP64, device=device)
                info = fn(*inputs, backend="triton", on_fail="raise", return_info=True)[1]
                got = _pararnn_grads(lambda *x: fn(*x, backend="triton", on_fail="raise"), inputs, weight)
                ref_inputs = [x.double() if x is not None else None for x in inputs]
                ref = _pararnn_grads(lambda *x: fn(*x, backend="torch", on_fail="raise"), ref_inputs, weight)
                _check_row(r, ["h", "du", "da"] + (["dh0"] if h0 else []), got, ref, _PARARNN_TOL[dtype])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # max_iter=0 falls back by design
                    fallback = fn(*inputs, backend="triton", max_iter=0)
                r["fallback_h"] = _rel_err(fallback, ref[0])
                r.update(iters=info.iterations, worst=max(r["worst"], r["fallback_h"]))
                r["ok"] = bool(r["worst"] < _PARARNN_TOL[dtype])

            _guarded(row, check)
            ok &= bool(row["ok"])
            rows.append(row)
        for B, T, D, dtype, h0 in generic_cases:
            row = dict(solver="newton_solve", cell=cell, shape=f"B{B} T{T} D{D}", dtype=_dt(dtype), h0=h0, mask=False)

            def check_generic(r):
                layer = cls(4, D)  # step/jacobian only: the weights below are explicit inputs
                inputs = _pararnn_inputs(cell, B, T, D, dtype, h0, False, device)
                weight = torch.randn(B, T, D, *(() if cell == "gru" else (2,)), dtype=FP64, device=device)

                def solve(backend):
                    def run(u, a, s0, _mask):
                        return newton_solve(layer.step, layer.jacobian, u, (a,), s0, state_size=D,
                                            structure=layer.structure, on_fail="raise", backend=backend)
                    return run

                got = _pararnn_grads(solve("triton"), inputs, weight)
                ref = _pararnn_grads(solve("torch"), [x.double() if x is not None else None for x in inputs], weight)
                _check_row(r, ["h", "du", "da"] + (["dh0"] if h0 else []), got, ref, _PARARNN_TOL[dtype])

            _guarded(row, check_generic)
            ok &= bool(row["ok"])
            rows.append(row)
        # the cell dispatches to the fused kernel on CUDA (parallel mode) and matches its sequential mode
        row = dict(solver="cell", cell=cell, shape="B2 T64 D16", dtype="float32", mask=True)

        def check_cell(r):
            layer = cls(8, 16).to(device)
            x = torch.randn(2, 64, 8, device=device)
            m = torch.ones(2, 64, device=device)
            m[1, :20] = 0
            with torch.no_grad():
                par, seq = layer(x, mask=m)[0], layer(x, mask=m, mode="sequential")[0]
            fused_used = layer._fused(layer.input_projection(x)) is not None
            err = _rel_err(par, seq)
            r.update(h=err, worst=err, fused_used=fused_used, ok=err < 1e-4 and (fused_used or device != "cuda"))

        _guarded(row, check_cell)
        ok &= bool(row["ok"])
        rows.append(row)
    return rows, ok


@section("pararnn_check", est_s=55, tiny_est_s=15)
def pararnn_check(args):
    rows, ok = pararnn_check_rows(PARARNN_TINY_CASES if args.tiny else PARARNN_CHECK_CASES, args.device,
                                  NEWTON_GENERIC_TINY_CASES if args.tiny else NEWTON_GENERIC_CASES)
    print_table("ParaRNN: fused Triton Newton and newton_solve on the Triton scans vs the PyTorch path in fp64 "
                "(max abs error / max |ref|)", rows,
                ["solver", "cell", "shape", "dtype", "h0", "mask", "iters", "h", "du", "da", "dh0", "fallback_h",
                 "fused_used", "ok", "error"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Memory-bank FFN: correctness and time

MEMORY_CHECK_CASES = [(8, 2048, 336, 512, BF16), (3, 77, 100, 72, FP32)]  # B, T, S, d, dtype
MEMORY_TINY_CASES = [(2, 9, 12, 16, FP32), (1, 5, 7, 10, BF16)]
_MEMORY_TOL = {FP32: 1e-4, BF16: 3e-2}


def _memory_inputs(B, T, S, d, dtype, device):
    x = torch.randn(B, T, d, device=device)
    ws = [torch.randn(B, S, d, device=device) * d ** -0.5 for _ in range(3)]
    return [t.to(dtype) for t in [x] + ws]


@section("memory_check", est_s=6, tiny_est_s=5)
def memory_check(args):
    from hf_seqmodels.kernels import memory_ffn

    names = ("y", "dx", "dw_gate", "dw_up", "dw_down")
    rows, ok = [], True
    for B, T, S, d, dtype in MEMORY_TINY_CASES if args.tiny else MEMORY_CHECK_CASES:
        row = dict(shape=f"B{B} T{T} S{S} d{d}", dtype=_dt(dtype))

        def check(r):
            inputs = _memory_inputs(B, T, S, d, dtype, args.device)
            weight = torch.randn(B, T, d, dtype=FP64, device=args.device)
            ref = _grads(lambda *x: memory_ffn(*x, backend="torch"), [x.double() for x in inputs], [weight])
            got = _grads(lambda *x: memory_ffn(*x, backend="triton"), inputs, [weight])
            _check_row(r, names, got, ref, _MEMORY_TOL[dtype])
            if len(rows) == 0:  # the first (production) shape: time both paths, fwd+bwd
                leaves = [x.detach().requires_grad_() for x in inputs]
                dy = torch.randn(B, T, d, device=args.device, dtype=dtype)
                for backend in ("triton", "torch"):
                    r[f"{backend}_ms"] = _bench(args, lambda: memory_ffn(*leaves, backend=backend).backward(dy),
                                                leaves)
                r["torch/triton"] = r["torch_ms"] / r["triton_ms"]

        _guarded(row, check)
        ok &= bool(row["ok"])
        rows.append(row)
    print_table("memory_ffn: Triton vs PyTorch path in fp64 (max abs error / max |ref|); fwd+bwd median ms", rows,
                ["shape", "dtype", *names, "ok", "triton_ms", "torch_ms", "torch/triton", "error"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Packed sequences

@section("packed_check", est_s=18, tiny_est_s=10)
def packed_check(args):
    """Packed sequences (cu_seqlens): the Triton path against the PyTorch path in fp64, values and gradients."""
    from hf_seqmodels.kernels import block2_scan, chunk_gla, fused_recurrent_gla, linear_scan
    from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

    dev = args.device
    lengths = [7, 1, 5, 3] if args.tiny else [700, 1, 129, 64, 33]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    T, N = sum(lengths), len(lengths)
    H, K, V, D = (2, 16, 16, 6) if args.tiny else (4, 64, 64, 256)
    rows, ok = [], True

    def add(row, fn):
        nonlocal ok
        row["lengths"] = str(lengths)
        _guarded(row, fn)
        ok &= bool(row["ok"])
        rows.append(row)

    for name, op in (("chunk_gla", chunk_gla), ("fused_recurrent_gla", fused_recurrent_gla)):
        def check_gla(r, op=op):
            q, k, v, g, _ = _gla_inputs(1, T, H, K, V, FP32, device=dev, state=False)
            inputs = (q, k, v, g, torch.randn(N, H, K, V, device=dev))
            weights = (torch.randn(1, T, H, V, device=dev), torch.randn(N, H, K, V, device=dev))
            ref = _grads(_gla_op(op, "torch", cu), [x.double() for x in inputs], weights)
            _check_row(r, _GLA_NAMES, _grads(_gla_op(op, "triton", cu), inputs, weights), ref, 1e-4)

        add(dict(op=name), check_gla)
    for kind, op in (("diagonal", linear_scan), ("block2", block2_scan)):
        def check_scan(r, kind=kind, op=op):
            a, b, _ = _scan_inputs(kind, 1, T, D, FP32, False, dev)
            s0 = torch.randn(N, D, *(() if kind == "diagonal" else (2,)), device=dev)
            weight = torch.randn(b.shape, dtype=FP64, device=dev)
            for reverse in (False, True):
                def fn(backend):
                    return lambda a, b, s0: op(a, b, s0, reverse=reverse, backend=backend, cu_seqlens=cu)

                ref = _grads(fn("torch"), [a.double(), b.double(), s0.double()], [weight])
                _check_row(r, ["h", "da", "db", "dh0"], _grads(fn("triton"), [a, b, s0], [weight]), ref, 1e-4)
                if not r["ok"]:
                    r["reverse"] = reverse
                    break

        add(dict(op=op.__name__), check_scan)
    for cls in (ParaGRUCell, ParaLSTMCell):
        def check_layer(r, cls=cls):  # the layers' packed path: newton_solve on packed scans (no fused kernel)
            layer = cls(8, 16).to(dev)
            x = torch.randn(1, T, 8, device=dev)
            s0 = torch.randn(N, 16, *(() if cls.structure == "diagonal" else (2,)), device=dev)
            weight = torch.randn(1, T, 16, dtype=FP64, device=dev)
            got = _grads(lambda x, s0: layer(x, h0=s0, cu_seqlens=cu)[0], [x, s0], [weight])
            with _backend_env("torch"):
                ref_layer = cls(8, 16).to(dev).double()
                ref_layer.load_state_dict(layer.state_dict())
                ref = _grads(lambda x, s0: ref_layer(x, h0=s0, cu_seqlens=cu)[0], [x.double(), s0.double()], [weight])
            _check_row(r, ["out", "dx", "dh0"], got, ref, 1e-4)

        add(dict(op=f"{cls.__name__}(cu_seqlens)"), check_layer)
    print_table("Packed sequences: Triton vs PyTorch path in fp64 (max abs error / max |ref|)", rows,
                ["op", "lengths", "worst", "reverse", "ok", "error"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Coverage: every Triton kernel of hf_seqmodels.kernels launched by the checks

KERNEL_LAUNCHES: dict = {}  # "module.function" -> the section that first launched it
_CURRENT = {"section": None}
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
    checks = [s for s in CHECK_SECTIONS if s in args.sections and args.sections.index(s) < args.sections.index("coverage")]
    print_table(f"Triton kernels in hf_seqmodels.kernels launched by the checks ({', '.join(checks) or 'none ran'})",
                rows, ["kernel", "launched_by"])
    if missing:
        print(f"NOT COVERED by a check: {missing}")
    return {"ok": bool(kernels) and not missing, "rows": rows, "missing": missing, "checks_run": checks}


CHECK_SECTIONS = ("gla_check", "scan_check", "pararnn_check", "memory_check", "packed_check")


# ---------------------------------------------------------------------------------------------------------------
# GLA: timings beside fla and SDPA. fla is imported and compiled first in a separate process (the warm-up, started
# with the suite): an import that fails for any reason (or crashes) only costs fla's column, with the reason.

def _gla_bench_inputs(B, T, H, D, device, requires_grad=True):
    import torch.nn.functional as F

    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=BF16, requires_grad=requires_grad) for _ in range(3))
    g = (F.logsigmoid(torch.randn(B, T, H, D, device=device)) / 16).to(BF16).requires_grad_(requires_grad)
    return q, k, v, g


def fla_chunk_gla_fn():
    """fla's chunk_gla, called in our [B, T, H, K] layout (older fla releases default to [B, H, T, K])."""
    import inspect

    from fla.ops.gla import chunk_gla as fla_chunk_gla

    layout = {"head_first": False} if "head_first" in inspect.signature(fla_chunk_gla).parameters else {}

    def fla(q, k, v, g):
        return fla_chunk_gla(q, k, v, g, **layout)[0]

    return fla


def ours_chunk_gla_fn():
    from hf_seqmodels.kernels import chunk_gla

    def ours(q, k, v, g):
        return chunk_gla(q, k, v, g, backend="triton")[0]

    return ours


def _first_fwd_bwd(args, fn, B, T, H, D):
    q, k, v, g = _gla_bench_inputs(B, T, H, D, args.device)
    _sync(args)
    t0 = time.perf_counter()
    fn(q, k, v, g).float().sum().backward()
    _sync(args)
    return time.perf_counter() - t0


def _shard_autotuning(shard, shards):
    """Make every Triton autotuner of this process compile and time only its share of the configs (those at
    ``shard::shards``; one at least): ``shards`` processes together compile each config once."""
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs

    def sharded(self, kwargs):
        configs = prune(self, kwargs)
        return configs[shard::shards] or configs[:1]

    Autotuner.prune_configs = sharded


def warmup_child(args):
    """One of ``--fla-shards`` warm-up processes, with a fresh Triton cache shared by them all (the suite merges it
    into its own). Shard 0 first times our chunk_gla's first fwd+bwd at the first shape (cold compile). Every shard
    then imports fla and runs its first fwd+bwd at every gla_bench shape, compiling its share of fla's autotuning
    configs (their timings are thrown away, ``FLA_CACHE_RESULTS=0``: the suite autotunes again on an idle GPU)."""
    shard, shards = args.child_shard
    out = {"shard": shard, "spawned_at": args.child_spawned}
    H, D = args.gla_hd
    write = lambda: _write_atomic(args.child_out, out)  # noqa: E731
    write()
    if shard == 0:
        try:
            out["ours_first_fwd_bwd_s"] = _first_fwd_bwd(args, ours_chunk_gla_fn(), *args.gla_shapes[0], H, D)
        except Exception as e:  # reported by gla_bench; fla's column is still worth measuring
            traceback.print_exc()
            out["ours_error"] = f"{type(e).__name__}: {e}"[:500]
        write()
    t0 = time.perf_counter()
    try:
        import fla

        fn = fla_chunk_gla_fn()
        out["fla_version"] = getattr(fla, "__version__", "unknown")
    except (Exception, SystemExit) as e:  # any failure, SystemExit included, only costs fla's column
        traceback.print_exc()
        out["fla_error"] = f"{type(e).__name__}: {e}"[:500]
        write()
        return 0
    out["fla_import_s"] = time.perf_counter() - t0
    write()
    if args.device != "cuda" and not args.fla_on_cpu:
        return 0
    if shards > 1:
        _shard_autotuning(shard, shards)
    out["fla_first_fwd_bwd_s"] = {}
    try:
        for B, T in args.gla_shapes:
            out["fla_first_fwd_bwd_s"][f"B{B} T{T}"] = _first_fwd_bwd(args, fn, B, T, H, D)
            write()
    except Exception as e:
        traceback.print_exc()
        err = f"fla's first call failed: {type(e).__name__}: {e}"[:500]
        # with its share of the configs only, a process may be left with none that fits the GPU: the suite's own
        # first call (all configs) decides then
        out["fla_shard_error" if shards > 1 else "fla_error"] = err
    write()
    return 0


def start_warmup(args):
    cache = tempfile.mkdtemp(prefix="gpu_suite_triton_warmup_")
    folder = Path(tempfile.mkdtemp(prefix="gpu_suite_warmup_"))
    env = dict(os.environ, TRITON_CACHE_DIR=cache, FLA_CACHE_RESULTS="0")
    procs = []
    for shard in range(args.fla_shards):
        out, log = folder / f"warmup{shard}.json", folder / f"warmup{shard}.log"
        with open(log, "w") as f:
            cmd = _child_cmd(args, "warmup", out, ("--child-shard", f"{shard}/{args.fla_shards}"))
            procs.append(dict(proc=subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), out=out,
                              log=log))
    return dict(procs=procs, cache=cache, folder=folder, started=time.monotonic())


def stop_warmup(warm):
    for p in warm["procs"]:
        if p["proc"].poll() is None:
            p["proc"].kill()
            p["proc"].wait()


def _child_cmd(args, kind, out, extra=()):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-out", str(out),
           "--child-spawned", repr(time.time()), "--device", args.device, "--gla-shapes", args.gla_shapes_str,
           "--model-shapes", args.model_shapes_str, "--model-steps", str(args.model_steps), *extra]
    if args.tiny:
        cmd.append("--tiny")
    if args.fla_on_cpu:
        cmd.append("--fla-on-cpu")
    return cmd


def _write_atomic(path, obj):
    """A child's report, replaced whole: the suite may kill a child at any moment and read what it last wrote."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    tmp.replace(path)


def _read_report(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _log_tail(path, n=1500):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _merge_triton_cache(src):
    """Copy a child's compiled kernels into this process's Triton cache (content-addressed folders)."""
    try:
        import triton

        shutil.copytree(src, triton.knobs.cache.dir, dirs_exist_ok=True)
    except Exception:
        traceback.print_exc()
    finally:
        shutil.rmtree(src, ignore_errors=True)


def finish_warmup(args, warm, wait_s):
    """Wait up to ``wait_s`` for the warm-up processes; returns (their combined report, the reason fla's column is
    skipped or None). Any shard that failed or was stopped skips the column: this process never imports an fla that
    crashed or hung elsewhere."""
    end = time.monotonic() + max(0.0, wait_s)
    for p in warm["procs"]:
        try:
            p["proc"].wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    stop_warmup(warm)
    since = time.monotonic() - warm["started"]
    shards = []
    for p in warm["procs"]:
        rep = _read_report(p["out"])
        rep.update(returncode=p["proc"].returncode, log_tail=_log_tail(p["log"]))
        shards.append(rep)
    _merge_triton_cache(warm["cache"])
    shutil.rmtree(warm["folder"], ignore_errors=True)
    first = shards[0]
    report = dict(shards=len(shards), seconds_since_start=since, fla_version=first.get("fla_version"),
                  ours_first_fwd_bwd_s=first.get("ours_first_fwd_bwd_s", first.get("ours_error")),
                  log_tail=first["log_tail"])
    times = [sh.get("fla_first_fwd_bwd_s") or {} for sh in shards]
    report["fla_shard_errors"] = [sh["fla_shard_error"] for sh in shards if "fla_shard_error" in sh]
    if all(times) and all(len(t) == len(args.gla_shapes) for t in times):
        # each shard compiled its share of fla's configs: the slowest is the wall time, their sum what one process
        # would take (a user's first call)
        report["fla_first_fwd_bwd_s"] = {k: max(t[k] for t in times) for k in times[0]}
        report["fla_first_calls_sum_s"] = sum(sum(t.values()) for t in times)
    errors = [sh["fla_error"] for sh in shards if "fla_error" in sh]
    if errors:
        return report, errors[0] if errors[0].startswith("fla's") else f"fla import failed: {errors[0]}"
    bad = [(i, sh) for i, sh in enumerate(shards) if sh["returncode"] != 0]
    if not bad:
        return report, None
    i, sh = bad[0]
    stage = ("fla's first calls (compile + autotune)" if "fla_import_s" in sh else
             "fla's import" if i > 0 or "ours_first_fwd_bwd_s" in sh else "the warm-up (our first call)")
    if sh["returncode"] == -9:
        return report, f"{stage} did not finish within {since:.0f} s of the suite's start"
    return report, f"{stage} failed in warm-up process {i}: exit status {sh['returncode']}; last output: " \
                   f"{sh['log_tail'][-400:]}"


def _gla_methods(args, B, T, H, D, fla):
    """name -> (forward, forward+backward, leaves) on fresh bf16 inputs; ``fla`` is fla's chunk_gla or None."""
    import torch.nn.functional as F

    q, k, v, g = _gla_bench_inputs(B, T, H, D, args.device)
    do = torch.randn(B, T, H, D, device=args.device, dtype=BF16)
    ours = ours_chunk_gla_fn()
    methods = {"ours": (lambda: ours(q, k, v, g), lambda: ours(q, k, v, g).backward(do), (q, k, v, g))}
    if fla is not None:
        methods["fla"] = (lambda: fla(q, k, v, g), lambda: fla(q, k, v, g).backward(do), (q, k, v, g))
    qs, ks, vs = (torch.randn(B, H, T, D, device=args.device, dtype=BF16, requires_grad=True) for _ in range(3))
    dos = torch.randn(B, H, T, D, device=args.device, dtype=BF16)

    def sdpa():
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

    methods["sdpa"] = (sdpa, lambda: sdpa().backward(dos), (qs, ks, vs))
    return methods


def _plot_bars(ax, rows, names, label, title, log=False):
    names = [n for n in names if any(r.get(f"{n}_ms") for r in rows)]
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ax.bar([j + i * width for j in range(len(rows))], [r.get(f"{n}_ms") or 0 for r in rows], width, label=n)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(rows))], [label(r) for r in rows])
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("ms (median)")
    ax.set_title(title)
    if names:
        ax.legend()


@section("gla_bench", est_s=90, tiny_est_s=15)
def gla_bench(args):
    H, D = args.gla_hd
    warm = args.warmup
    # wait for fla's compile only as long as the sections after this one (and this one's timings) keep their time
    wait = min(args.fla_wait_s, _remaining(args) - args.later_est_s - SECTIONS["gla_bench"][args.est_key])
    report, fla_reason = ({}, "the warm-up process was not started") if warm is None else finish_warmup(args, warm, wait)
    fla = None
    if fla_reason is None:
        try:  # the warm-up imported it, but this process may still differ: any failure only costs the column
            fla = fla_chunk_gla_fn()
        except (Exception, SystemExit) as e:
            fla_reason = f"fla import failed in the suite's process: {type(e).__name__}: {e}"[:500]
    if fla is not None and args.device != "cuda" and not args.fla_on_cpu:
        fla, fla_reason = None, f"fla {report.get('fla_version')} imported, but its Triton kernels need a CUDA device"
    print(f"fla: {'skipped: ' + fla_reason if fla_reason else 'fla ' + str(report.get('fla_version'))}")
    rows, ok, first_call = [], True, {}
    for B, T in args.gla_shapes:
        if _remaining(args) < 20:
            rows.append(dict(shape=f"B{B} T{T}", B=B, T=T, skipped="budget"))
            continue
        methods = _gla_methods(args, B, T, H, D, fla)
        for name in ("ours", "fla"):  # the first fwd+bwd in this process (fla: its autotuning on this idle GPU)
            if name in methods and name not in first_call:
                try:
                    _sync(args)
                    t0 = time.perf_counter()
                    methods[name][1]()
                    _sync(args)
                    first_call[name] = time.perf_counter() - t0
                except Exception as e:
                    traceback.print_exc()
                    if name == "fla":
                        fla_reason = f"fla's first call failed: {type(e).__name__}: {e}"[:500]
                        methods.pop("fla")
                        fla = None
                    else:
                        ok = False
        agree = None
        if "fla" in methods:
            try:
                with torch.no_grad():
                    o_ours, o_fla = methods["ours"][0]().float(), methods["fla"][0]().float()
                agree = float((o_ours - o_fla).abs().max() / o_fla.abs().max())
            except Exception:  # a broken peer must not stop the rest of the run
                traceback.print_exc()
        for mode in ("fwd", "fwd+bwd"):
            row = dict(shape=f"B{B} T{T}", B=B, T=T, mode=mode)
            for name, (fwd, fwd_bwd, leaves) in methods.items():
                try:
                    if mode == "fwd":
                        with torch.no_grad():
                            row[f"{name}_ms"] = _bench(args, fwd)
                            row[f"{name}_MiB"] = _peak_mib(args, fwd)
                    else:
                        row[f"{name}_ms"] = _bench(args, fwd_bwd, leaves)
                        row[f"{name}_MiB"] = _peak_mib(args, fwd_bwd)
                except Exception as e:
                    traceback.print_exc()
                    row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
                    ok = ok and name != "ours"
            for peer in ("fla", "sdpa"):  # peer time / our time: above 1, ours is faster
                if row.get("ours_ms") and row.get(f"{peer}_ms"):
                    row[f"{peer}/ours"] = row[f"{peer}_ms"] / row["ours_ms"]
            row["max_err_vs_fla"] = agree
            rows.append(row)
        del methods
        if args.device == "cuda":
            torch.cuda.empty_cache()
    cold = {"ours": report.get("ours_first_fwd_bwd_s"), "fla": report.get("fla_first_fwd_bwd_s"),
            "fla_one_process_estimate_s": report.get("fla_first_calls_sum_s")}
    print_table(f"GLA chunked, H{H} D{D} bf16, median ms; peer/ours above 1: ours faster", rows,
                ["shape", "mode", "ours_ms", "fla_ms", "sdpa_ms", "fla/ours", "sdpa/ours", "ours_MiB", "fla_MiB",
                 "sdpa_MiB", "max_err_vs_fla", "skipped"])
    print(f"cold first fwd+bwd (fresh process, empty Triton cache, beside the checks): ours {cold['ours']} s; fla "
          f"(compile + autotune, its configs split over {report.get('shards')} processes) {cold['fla']} s per shape, "
          f"{cold['fla_one_process_estimate_s']} s summed over the processes (~one process); first call in this "
          f"process (fla: autotuning on the idle GPU from the compiled kernels): {first_call}")
    ok = ok and any(r.get("ours_ms") for r in rows)

    def plot(axes):
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            _plot_bars(ax, [r for r in rows if r.get("mode") == mode], ("ours", "fla", "sdpa"), lambda r: r["shape"],
                       f"GLA H{H} D{D} bf16, {mode}")

    return {"ok": ok, "rows": rows, "fla": {"skipped": fla_reason, "version": report.get("fla_version")},
            "cold_first_fwd_bwd_s": cold, "first_call_in_process_s": first_call, "warmup": report, "plot": plot,
            "panels": 2}


# ---------------------------------------------------------------------------------------------------------------
# ParaRNN: timings beside cuDNN GRU/LSTM and a sequential loop

def pararnn_methods(cell, B, T, H, dtype, device="cuda", backend=None):
    """name -> (forward, forward+backward or None, leaves) for one ParaGRU/ParaLSTM layer (input projection
    included) solved by the fused kernel, by the generic Newton solver, step by step ("loop", forward only), and the
    same-size torch.nn.GRU/LSTM (cuDNN on a GPU)."""
    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm, newton_solve, sequential_solve
    from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

    layer = (ParaGRUCell if cell == "gru" else ParaLSTMCell)(H, H).to(device=device, dtype=dtype)
    fused_fn = fused_newton_gru if cell == "gru" else fused_newton_lstm
    x = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=True)
    do = torch.randn(B, T, H, device=device, dtype=dtype)
    leaves = (x, *layer.parameters())
    solve_kw = dict(state_size=H, structure=layer.structure)

    def fused():
        return layer.output(fused_fn(layer.input_projection(x), layer.a, backend=backend))

    def generic():
        u = layer.input_projection(x)
        return layer.output(newton_solve(layer.step, layer.jacobian, u, (layer.a,), **solve_kw))

    def loop():
        return layer.output(sequential_solve(layer.step, layer.input_projection(x), (layer.a,), **solve_kw))

    rnn = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(H, H, batch_first=True).to(device=device, dtype=dtype)

    def cudnn():
        return rnn(x)[0]

    return {
        "fused": (fused, lambda: fused().backward(do), leaves),
        "generic": (generic, lambda: generic().backward(do), leaves),
        "cudnn": (cudnn, lambda: cudnn().backward(do), (x, *rnn.parameters())),
        "loop": (loop, None, ()),
    }


@section("pararnn_bench", est_s=40, tiny_est_s=10)
def pararnn_bench(args):
    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm

    H, dt, dev = args.pararnn_hidden, BF16, args.device
    rows, ok, first_call = [], True, {}
    for cell in ("gru", "lstm"):
        for B, T in args.pararnn_shapes:
            if _remaining(args) < 15:
                rows.append(dict(cell=cell, shape=f"B{B} T{T} H{H}", T=T, skipped="budget"))
                continue
            methods = pararnn_methods(cell, B, T, H, dt, device=dev)
            if cell not in first_call:  # the first fused forward+backward in this process (compiled by the checks?)
                _sync(args)
                t0 = time.perf_counter()
                methods["fused"][1]()
                _sync(args)
                first_call[cell] = time.perf_counter() - t0
            fn = fused_newton_gru if cell == "gru" else fused_newton_lstm
            u = torch.randn(B, T, 3, H, device=dev, dtype=dt)
            a = torch.randn(3 if cell == "gru" else 5, H, device=dev)
            a = (a * (0.5 / a.norm(dim=-1, keepdim=True))).to(dt)
            iters = fn(u, a, return_info=True)[1].iterations
            for mode in ("fwd", "fwd+bwd"):
                row = dict(cell=cell, shape=f"B{B} T{T} H{H}", T=T, mode=mode, fused_iters=iters)
                for name, (fwd, fwd_bwd, leaves) in methods.items():
                    try:
                        if mode == "fwd":
                            with torch.no_grad():
                                row[f"{name}_ms"] = (_time_capped(args, fwd, budget_s=3.0) if name == "loop"
                                                     else _bench(args, fwd))
                        elif fwd_bwd is not None:
                            row[f"{name}_ms"] = _bench(args, fwd_bwd, leaves)
                    except Exception as e:
                        traceback.print_exc()
                        row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
                        ok = ok and name != "fused"
                f = row.get("fused_ms")
                for name in ("loop", "cudnn", "generic"):
                    if f and row.get(f"{name}_ms"):
                        row[f"{name}/fused"] = row[f"{name}_ms"] / f
                rows.append(row)
            del methods, u, a
            if dev == "cuda":
                torch.cuda.empty_cache()
    tile_rows = _pararnn_tile_sweep(args, H, dt) if args.pararnn_tiles else []
    compile_s = ", ".join(f"{c} {s:.1f} s" for c, s in first_call.items())
    print_table(f"ParaRNN layer (input projection + solve), bf16, median ms; other/fused above 1: fused faster "
                f"(first fused fwd+bwd in this process: {compile_s})", rows,
                ["cell", "shape", "mode", "fused_ms", "generic_ms", "cudnn_ms", "loop_ms", "loop/fused",
                 "cudnn/fused", "generic/fused", "fused_iters", "skipped"])
    ok = ok and any(r.get("fused_ms") for r in rows)

    def plot(axes):
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            _plot_bars(ax, [r for r in rows if r.get("mode") == mode], ("fused", "generic", "cudnn", "loop"),
                       lambda r: f"{r['cell']} T{r['T']}", f"ParaRNN H{H} bf16, {mode}", log=True)

    return {"ok": ok, "rows": rows, "tile_rows": tile_rows, "first_call_in_process_s": first_call, "plot": plot,
            "panels": 2}


def _pararnn_tile_sweep(args, H, dt):
    """Fused fwd+bwd time per (BLOCK_T, BLOCK_D) at the first --pararnn-shapes entry (each new pair compiles). Reads
    the kernel module's tile limits (MAX_BLOCK_T, MAX_BLOCK_D); reports an error row if they are gone."""
    from hf_seqmodels.kernels.pararnn import fused_triton

    if not (isinstance(getattr(fused_triton, "MAX_BLOCK_T", None), dict) and hasattr(fused_triton, "MAX_BLOCK_D")):
        return [dict(error="kernels.pararnn.fused_triton has no MAX_BLOCK_T dict / MAX_BLOCK_D: no tile sweep")]
    saved = dict(fused_triton.MAX_BLOCK_T), fused_triton.MAX_BLOCK_D
    B, T = args.pararnn_shapes[0]
    rows = []
    try:
        for cell in ("gru", "lstm"):
            fwd, fwd_bwd, leaves = pararnn_methods(cell, B, T, H, dt, device=args.device)["fused"]
            for bt, bd in args.pararnn_tiles:
                fused_triton.MAX_BLOCK_T[cell], fused_triton.MAX_BLOCK_D = bt, bd
                row = dict(cell=cell, shape=f"B{B} T{T} H{H}", tiles=f"{bt}x{bd}")
                try:
                    with torch.no_grad():
                        row["fwd_ms"] = _bench(args, fwd)
                    row["fwd+bwd_ms"] = _bench(args, fwd_bwd, leaves)
                except Exception as e:
                    traceback.print_exc()
                    row["error"] = repr(e)
                rows.append(row)
    finally:
        fused_triton.MAX_BLOCK_T.update(saved[0])
        fused_triton.MAX_BLOCK_D = saved[1]
    print_table("ParaRNN fused kernel by tile size (BLOCK_T x BLOCK_D), bf16, median ms", rows,
                ["cell", "shape", "tiles", "fwd_ms", "fwd+bwd_ms", "error"])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Models: one training step (bf16 autocast, fp32 master weights, fused AdamW), each model in a fresh process with an
# empty Triton cache, so its first step is what a user's first step costs on a fresh machine.

MODELS = ("gla", "llama", "fla_gla")
DEFAULT_MODELS = ("gla", "llama")


def model_config(name, tiny, max_len):
    """(config, model class, description) of GLA-340M (fla's gla_340M.json: hidden 1024, 24 layers, 4 heads,
    expand_k 0.5, expand_v 1, SwiGLU 2816, tied embeddings, vocab 32000), Llama-374M (the same width, depth, MLP and
    vocabulary; 16 heads of 64, untied embeddings) or fla's own GLA-340M (the peer, opt-in). ``tiny``: 2 layers of
    32."""
    size = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, intermediate_size=64) if tiny else dict(
        vocab_size=32000, hidden_size=1024, num_hidden_layers=24, intermediate_size=2816)
    heads = 2 if tiny else 4
    if name == "gla":
        from hf_seqmodels import GLAConfig, GLAForCausalLM

        return GLAConfig(num_heads=heads, expand_k=0.5, expand_v=1.0, tie_word_embeddings=True, use_cache=False,
                         **size), GLAForCausalLM, "hf-seqmodels GLA-340M"
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(num_attention_heads=2 if tiny else 16, num_key_value_heads=2 if tiny else 16,
                             max_position_embeddings=max_len, rms_norm_eps=1e-6, tie_word_embeddings=False,
                             use_cache=False, **size)
        config._attn_implementation = "sdpa"
        return config, LlamaForCausalLM, "transformers Llama-374M (SDPA)"
    if name == "fla_gla":
        from fla.models import GLAConfig as FlaGLAConfig
        from fla.models import GLAForCausalLM as FlaGLAForCausalLM

        return FlaGLAConfig(num_heads=heads, expand_k=0.5, expand_v=1.0, hidden_ratio=4, tie_word_embeddings=True,
                            use_cache=False, attn_mode="chunk", fuse_norm=True, fuse_cross_entropy=True,
                            **{**size, "intermediate_size": None}), FlaGLAForCausalLM, "fla GLA-340M"
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def is_oom(e):
    return isinstance(e, OOM_ERRORS) or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "CUBLAS_STATUS_ALLOC_FAILED" in str(e)))


def train_rows(run_shape, shapes, emit=lambda rows: None, deadline=None, free=lambda: None):
    """Rows of ``run_shape(B, T) -> dict`` for every (B, T). Out of memory is a row (``oom``), then the same T is
    retried at half the batch, down to 1; any other error is a row too, and the next shape is tried."""
    rows = []
    for B, T in shapes:
        b = B
        while True:
            if deadline is not None and time.monotonic() > deadline:
                rows.append(dict(B=b, T=T, skipped="budget"))
                break
            try:
                row = dict(B=b, T=T, **run_shape(b, T))
            except Exception as e:  # the traceback (and the step's tensors) are released when this block ends
                if not is_oom(e):
                    traceback.print_exc()
                row = dict(B=b, T=T, **({"oom": str(e).splitlines()[0][:300]} if is_oom(e) else
                                        {"error": f"{type(e).__name__}: {e}"[:300]}))
            free()
            rows.append(row)
            emit(rows)
            if "oom" not in row or b == 1:
                break
            b //= 2
    return rows


def model_child(args):
    t_spawn = args.child_spawned
    out = {"model": args.child_model, "rows": []}
    write = lambda: _write_atomic(args.child_out, out)  # noqa: E731
    write()
    dev = args.device
    max_len = max(T for _, T in args.model_shapes)
    config, cls, out["description"] = model_config(args.child_model, args.tiny, max_len)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = cls(config)
    model.train()
    out["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["build_s"] = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    write()
    deadline = time.monotonic() + args.budget_s - (time.time() - t_spawn)  # the budget counts from the spawn

    def step(ids):
        with torch.autocast(device_type=dev, dtype=BF16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)  # syncs

    def run_shape(B, T):
        ids = torch.randint(config.vocab_size, (B, T), device=dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        first_loss = step(ids)
        row = dict(first_step_s=time.perf_counter() - t0, loss_first=first_loss)
        if "cold_start_s" not in out:  # process start to the end of the first step (imports, build, compile)
            out["cold_start_s"] = time.time() - t_spawn
            out["first_step_s"] = row["first_step_s"]
            out["first_shape"] = f"B{B} T{T}"
        times = []
        for _ in range(args.model_steps):
            t0 = time.perf_counter()
            row["loss_last"] = step(ids)
            times.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
        s = sorted(times)[len(times) // 2]
        row.update(step_ms=s * 1e3, tokens_per_s=B * T / s, steps=len(times))
        if dev == "cuda":
            row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        return row

    def free():
        opt.zero_grad(set_to_none=True)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()

    def emit(rows):
        out["rows"] = rows
        write()

    train_rows(run_shape, args.model_shapes, emit, deadline, free)
    write()
    return 0


@section("model_bench", est_s=75, tiny_est_s=35)
def model_bench(args):
    rows, ok, reports = [], True, {}
    names = list(args.models)
    for i, name in enumerate(names):
        left = _remaining(args) - 5
        reserve = 40 * sum(1 for n in names[i + 1:] if n in DEFAULT_MODELS)  # leave the next default models a chance
        timeout = left - reserve if left - reserve > 30 else left
        if timeout < 20:
            rows.append(dict(model=name, skipped=f"budget: {left:.0f} s left"))
            ok = ok and name not in DEFAULT_MODELS
            continue
        cache = tempfile.mkdtemp(prefix="gpu_suite_triton_model_")
        out = Path(tempfile.mkdtemp(prefix="gpu_suite_model_")) / f"{name}.json"
        log = out.with_suffix(".log")
        cmd = _child_cmd(args, "model", out, ("--child-model", name, "--budget-s", str(max(5.0, timeout - 10))))
        print(f"model_bench: {name}, fresh process, empty Triton cache, at most {timeout:.0f} s")
        sys.stdout.flush()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, env=dict(os.environ, TRITON_CACHE_DIR=cache), stdout=f,
                                    stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(cache, ignore_errors=True)
        report = _read_report(out)
        report["returncode"] = proc.returncode
        report["log_tail"] = _log_tail(log)
        shutil.rmtree(out.parent, ignore_errors=True)
        reports[name] = report
        common = dict(model=name, params_M=report.get("params_M"), cold_start_s=report.get("cold_start_s"))
        for r in report.get("rows", []):
            rows.append({**common, **r})
        if proc.returncode != 0:
            what = "killed at the time limit" if proc.returncode == -9 else f"exit status {proc.returncode}"
            rows.append(dict(model=name, error=f"{what}; last output: {report['log_tail'][-300:]}"))
            print(report["log_tail"])
        measured = any(r.get("tokens_per_s") for r in report.get("rows", []))
        broken = any(r.get("error") for r in report.get("rows", []))
        if name in DEFAULT_MODELS:
            ok = ok and measured and not broken and proc.returncode == 0
    print_table("Training step, bf16 autocast + fused AdamW, median of the timed steps (first step: compile "
                "included for the first shape; cold start: process start to the end of the first step)", rows,
                ["model", "params_M", "B", "T", "tokens_per_s", "step_ms", "first_step_s", "cold_start_s", "peak_GiB",
                 "loss_first", "loss_last", "oom", "error", "skipped"])

    def plot(axes):
        done = [r for r in rows if r.get("tokens_per_s")]
        ax = axes[0]
        ax.bar(range(len(done)), [r["tokens_per_s"] for r in done])
        ax.set_xticks(range(len(done)), [f"{r['model']}\nB{r['B']} T{r['T']}" for r in done])
        ax.set_ylabel("tokens/s")
        ax.set_title("training step, bf16 autocast, AdamW")

    return {"ok": ok, "rows": rows, "children": reports, "plot": plot, "panels": 1}


# ---------------------------------------------------------------------------------------------------------------

def _pairs(text):
    return [tuple(int(x) for x in s.split("x")) for s in text.split(",") if s]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, in this order (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--out", default=os.environ.get("OUT") or "out",
                   help="directory for gpu_suite.json and gpu_suite.png (default: $OUT if set, else ./out)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default), or cpu for the smoke run (with --tiny; Triton kernels in the interpreter)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes everywhere (the CPU smoke run)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget of the whole run in seconds (default 420; --tiny: 900)")
    p.add_argument("--gla-shapes", default=None,
                   help="BxT pairs for gla_bench (H16 D128 bf16), default 8x2048,2x8192,1x32768")
    p.add_argument("--fla-wait-s", type=float, default=150.0,
                   help="most seconds gla_bench waits for the fla warm-up process (started with the suite) after\n"
                        "the checks; past it fla's column is skipped with the reason (default 150)")
    p.add_argument("--fla-shards", type=int, default=None,
                   help="warm-up processes that compile fla's autotuning configs between them (default 8; --tiny: 2)")
    p.add_argument("--fla-on-cpu", action="store_true",
                   help="with --device cpu: run fla's column too (the smoke test uses it with a stand-in fla package)")
    p.add_argument("--pararnn-shapes", default=None,
                   help="BxT pairs for pararnn_bench (bf16, hidden --pararnn-hidden), default 8x2048,8x8192")
    p.add_argument("--pararnn-hidden", type=int, default=None, help="hidden size for pararnn_bench (default 1024)")
    p.add_argument("--pararnn-tiles", default="",
                   help="optional BLOCK_TxBLOCK_D pairs (e.g. 32x32,64x32,128x16) to time the fused kernels with in\n"
                        "pararnn_bench, at the first --pararnn-shapes entry (default: none, the built-in tiles)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"models for model_bench, from {', '.join(MODELS)} (default gla,llama; fla_gla is fla's own\n"
                        "GLA-340M, whose cold start alone may not fit the budget)")
    p.add_argument("--model-shapes", default=None, help="BxT pairs for model_bench, default 8x2048,8x8192")
    p.add_argument("--model-steps", type=int, default=None, help="timed steps per shape after the first (default 5)")
    # internal: the child processes (fla warm-up, one model's training steps)
    p.add_argument("--child", choices=("warmup", "model"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-spawned", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-shard", default="0/1", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tiny = args.tiny
    args.budget_s = args.budget_s if args.budget_s is not None else (900.0 if tiny else 420.0)
    args.gla_shapes_str = args.gla_shapes or ("1x40,2x17" if tiny else "8x2048,2x8192,1x32768")
    args.model_shapes_str = args.model_shapes or ("1x32,2x24" if tiny else "8x2048,8x8192")
    args.model_steps = args.model_steps if args.model_steps is not None else (1 if tiny else 5)
    args.gla_shapes = _pairs(args.gla_shapes_str)
    args.model_shapes = _pairs(args.model_shapes_str)
    args.pararnn_shapes = _pairs(args.pararnn_shapes or ("1x12" if tiny else "8x2048,8x8192"))
    args.pararnn_hidden = args.pararnn_hidden or (8 if tiny else 1024)
    args.pararnn_tiles = _pairs(args.pararnn_tiles)
    args.gla_hd = (2, 16) if tiny else (16, 128)
    args.fla_shards = args.fla_shards if args.fla_shards is not None else (2 if tiny else 8)
    args.child_shard = tuple(int(x) for x in args.child_shard.split("/"))
    if args.fla_shards < 1:
        p.error(f"--fla-shards must be at least 1, got {args.fla_shards}")
    args.cpu_reps = 1 if tiny else 3
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    args.models = [m for m in args.models.split(",") if m]
    if any(m not in MODELS for m in args.models):
        p.error(f"--models: each must be one of {MODELS}, got {args.models}")
    if args.model_steps < 1:
        p.error(f"--model-steps must be at least 1, got {args.model_steps}")
    if not args.gla_shapes or not args.model_shapes or not args.pararnn_shapes:
        p.error("--gla-shapes, --model-shapes and --pararnn-shapes need at least one BxT pair")
    return args


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = [(r["plot"], r.get("panels", 1)) for r in results.values() if r.get("plot")]
    n = sum(p for _, p in plots)
    if not n:
        return None
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    i = 0
    for fn, panels in plots:
        fn(list(axes[0][i:i + panels]))
        i += panels
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_json(path, meta, results, t_start, ok):
    payload = dict(meta, ok=ok, elapsed_s=time.monotonic() - t_start,
                   sections={n: {k: v for k, v in r.items() if k != "plot"} for n, r in results.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def _prepare_device(args):
    if args.device == "cpu":
        # before triton is imported (hf_seqmodels.kernels imports it): the kernels run in the interpreter, and every
        # op takes its Triton path as on the GPU
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["HF_SEQMODELS_BACKEND"] = "triton"
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("gpu_suite: no CUDA device (use --device cpu --tiny for the smoke run)", file=sys.stderr)
        return False
    return True


def main(argv=None):
    args = parse_args(argv)
    if not _prepare_device(args):
        return 2
    if args.child:
        args.deadline = time.monotonic() + args.budget_s
        return warmup_child(args) if args.child == "warmup" else model_child(args)
    t_start = time.monotonic()
    args.deadline = t_start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # fla's import and compile (and ours, cold) run in a separate process beside the checks
    args.warmup = start_warmup(args) if "gla_bench" in args.sections else None
    if "coverage" in args.sections:
        install_launch_ledger()
    import triton

    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), host=platform.node(),
                device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.machine()})",
                torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                tiny=args.tiny, budget_s=args.budget_s, argv=sys.argv[1:] if argv is None else list(argv))
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    key = args.est_key = "tiny_est_s" if args.tiny else "est_s"
    meta["plan_s"] = {name: SECTIONS[name][key] for name in args.sections}
    print(json.dumps(meta))
    print(f"plan: {', '.join(f'{n} ~{s} s' for n, s in meta['plan_s'].items())}; total ~{sum(meta['plan_s'].values())} s"
          f" of a {args.budget_s:.0f} s budget ({'CPU smoke estimates' if args.tiny else 'H100/H200 estimates'})")
    results, ok = {}, True
    json_path = out / "gpu_suite.json"
    for i, name in enumerate(args.sections):
        est = SECTIONS[name][key]
        args.later_est_s = sum(SECTIONS[n][key] for n in args.sections[i + 1:])
        left = _remaining(args)
        t0 = time.monotonic()
        if left < est / 2:
            results[name] = {"ok": None, "skipped": f"budget: {left:.0f} s left, the section needs ~{est} s"}
            print(f"\n== {name}: skipped ({results[name]['skipped']})")
        else:
            print(f"\n== {name} (estimate ~{est} s, {left:.0f} s left)")
            sys.stdout.flush()
            _CURRENT["section"] = name
            try:
                results[name] = SECTIONS[name]["fn"](args)
            except Exception as e:
                traceback.print_exc()
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
            ok &= bool(results[name].get("ok"))
        if name == "coverage":
            remove_launch_ledger()  # the timings below run without the ledger's wrapper, even if coverage was skipped
        results[name]["seconds"] = time.monotonic() - t0
        results[name]["estimate_s"] = est
        print(f"-- {name}: {results[name]['seconds']:.1f} s (estimate {est} s), ok={results[name].get('ok')}; "
              f"{time.monotonic() - t_start:.0f} s elapsed")
        _write_json(json_path, meta, results, t_start, ok)  # a run cut short keeps every finished section
    remove_launch_ledger()
    if args.warmup is not None:
        stop_warmup(args.warmup)
    png = None
    try:
        png = _plot(results, out / "gpu_suite.png")
    except Exception:
        traceback.print_exc()
    _write_json(json_path, meta, results, t_start, ok)
    skipped = [n for n, r in results.items() if r.get("skipped")]
    print(f"\nwrote {json_path}" + (f" and {png}" if png else "") + f"; {time.monotonic() - t_start:.0f} s; "
          f"all ok: {ok}" + (f"; skipped: {skipped}" if skipped else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
