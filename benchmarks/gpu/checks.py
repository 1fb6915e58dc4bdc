"""The GPU suite's correctness checks: every Triton kernel (values, final states and every gradient) against the
PyTorch path in fp64 on the same inputs, errors relative to the reference's largest value.

    gla_check      chunk_gla and fused_recurrent_gla
    scan_check     linear_scan and block2_scan, forward and reverse
    pararnn_check  the fused Newton GRU/LSTM kernels, their sequential fallbacks, newton_solve on the Triton scans
    memory_check   memory_ffn (and its time beside the PyTorch bmm path)
    packed_check   packed sequences (cu_seqlens): GLA, both scans, the ParaGRU/ParaLSTM layers

Each ``*_rows(cases, device)`` function runs on any device (the CPU smoke run and the tests use it in the Triton
interpreter); a failing row records its error and the section carries on.
"""

from __future__ import annotations

import contextlib
import math
import os
import traceback

import torch

from benchmarks.gpu.common import BF16, FP32, FP64, bench, dtype_name, print_table, section


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
    sum(
        ((o.double() * w).sum() for o, w in zip(outs, weights)), torch.zeros((), dtype=FP64, device=outs[0].device)
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

GLA_CHECK_CASES = [  # B, T, H, K, V, dtype of q/k/v, dtype of g, gates ("head...": a gate per head, g [B, T, H])
    (2, 1000, 4, 128, 128, BF16, BF16, "normal"),  # the gla_bench head shape
    (2, 333, 4, 128, 256, BF16, FP32, "normal"),  # GLA-340M's heads (K128 V256), g fp32 as the GLA layer makes it
    (3, 77, 3, 100, 36, FP32, FP32, "steep"),  # fp32 (tf32x3 dots), padded odd head dims, extreme gates
    (1, 1, 2, 128, 128, BF16, BF16, "normal"),
    (2, 1000, 4, 128, 128, BF16, FP32, "head_mamba2"),  # the scalar-gate kernels at Mamba-2 decay rates
    (3, 77, 3, 100, 36, FP32, FP32, "head_mild"),
]
GLA_TINY_CASES = [
    (1, 20, 2, 16, 16, FP32, FP32, "normal"),
    (2, 9, 1, 24, 8, FP32, FP32, "steep"),
    (1, 1, 2, 16, 16, BF16, FP32, "normal"),
    (1, 70, 2, 16, 16, FP32, FP32, "head_mamba2"),
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
    elif gates == "head_mamba2":  # one gate per head, 3-8 nats a step (a Mamba-2 head's dt A)
        g = -3 - 5 * torch.rand(B, T, H, device=device)
    elif gates == "head_mild":  # one gate per head, the GLA layer's range
        g = F.logsigmoid(torch.randn(B, T, H, device=device)) / 16
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
        # dg = q*dq - k*dk summed backwards (and over K for a gate per head): its error is relative to those
        # products, not to dg itself
        qdq, kdk = q * ref[2], k * ref[3]
        if inputs[3].dim() == 3:
            qdq, kdk = qdq.sum(-1), kdk.sum(-1)
        dg_scale = max(float(ref[5].abs().max()), float(qdq.abs().max()), float(kdk.abs().max()))
        for op_name, op in (("chunk", chunk_gla), ("recurrent", fused_recurrent_gla)):
            row = dict(
                op=op_name,
                shape=f"B{B} T{T} H{H} K{K} V{V}",
                dtype=dtype_name(dtype),
                g=dtype_name(g_dtype),
                gates=gates,
            )
            _guarded(
                row,
                lambda r: _check_row(
                    r, _GLA_NAMES, _grads(_gla_op(op, "triton"), inputs, weights), ref, _TOL[dtype], {"dg": dg_scale}
                ),
            )
            ok &= bool(row["ok"])
            rows.append(row)
    return rows, ok


@section("gla_check", est_s=50, tiny_est_s=30)
def gla_check(args):
    rows, ok = gla_check_rows(GLA_TINY_CASES if args.tiny else GLA_CHECK_CASES, args.device)
    print_table(
        "GLA Triton vs PyTorch path in fp64 (max abs error / max |ref|; fwd, final state and all gradients)",
        rows,
        ["op", "shape", "dtype", "g", "gates", *_GLA_NAMES, "ok", "error"],
    )
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Scans: correctness

SCAN_CHECK_CASES = [  # B, T, D, dtype, initial state, reverse
    (2, 1000, 96, FP32, True, False),
    (2, 1000, 96, FP32, True, True),
    (3, 2048, 256, BF16, False, False),  # the Newton solver's production shape class
    (4, 1, 64, FP32, True, True),
]
SCAN_TINY_CASES = [
    (1, 13, 5, FP32, True, False),
    (2, 9, 3, FP32, True, True),
    (1, 1, 4, FP32, True, False),
    (1, 17, 6, BF16, False, False),
]
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
            row = dict(op=op.__name__, shape=f"B{B} T{T} D{D}", dtype=dtype_name(dtype), h0=h0, reverse=reverse)

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
    print_table(
        "Scans: Triton vs PyTorch path in fp64 (max abs error / max |ref|)",
        rows,
        ["op", "shape", "dtype", "h0", "reverse", "h", "da", "db", "dh0", "ok", "error"],
    )
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
            row = dict(solver="fused", cell=cell, shape=f"B{B} T{T} D{D}", dtype=dtype_name(dtype), h0=h0, mask=mask)

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
            row = dict(
                solver="newton_solve", cell=cell, shape=f"B{B} T{T} D{D}", dtype=dtype_name(dtype), h0=h0, mask=False
            )

            def check_generic(r):
                layer = cls(4, D)  # step/jacobian only: the weights below are explicit inputs
                inputs = _pararnn_inputs(cell, B, T, D, dtype, h0, False, device)
                weight = torch.randn(B, T, D, *(() if cell == "gru" else (2,)), dtype=FP64, device=device)

                def solve(backend):
                    def run(u, a, s0, _mask):
                        return newton_solve(
                            layer.step,
                            layer.jacobian,
                            u,
                            (a,),
                            s0,
                            state_size=D,
                            structure=layer.structure,
                            on_fail="raise",
                            backend=backend,
                        )

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
    rows, ok = pararnn_check_rows(
        PARARNN_TINY_CASES if args.tiny else PARARNN_CHECK_CASES,
        args.device,
        NEWTON_GENERIC_TINY_CASES if args.tiny else NEWTON_GENERIC_CASES,
    )
    print_table(
        "ParaRNN: fused Triton Newton and newton_solve on the Triton scans vs the PyTorch path in fp64 "
        "(max abs error / max |ref|)",
        rows,
        [
            "solver",
            "cell",
            "shape",
            "dtype",
            "h0",
            "mask",
            "iters",
            "h",
            "du",
            "da",
            "dh0",
            "fallback_h",
            "fused_used",
            "ok",
            "error",
        ],
    )
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Memory-bank FFN: correctness and time

MEMORY_CHECK_CASES = [(8, 2048, 336, 512, BF16), (3, 77, 100, 72, FP32)]  # B, T, S, d, dtype
MEMORY_TINY_CASES = [(2, 9, 12, 16, FP32), (1, 5, 7, 10, BF16)]
_MEMORY_TOL = {FP32: 1e-4, BF16: 3e-2}


def _memory_inputs(B, T, S, d, dtype, device):
    x = torch.randn(B, T, d, device=device)
    ws = [torch.randn(B, S, d, device=device) * d**-0.5 for _ in range(3)]
    return [t.to(dtype) for t in [x] + ws]


@section("memory_check", est_s=6, tiny_est_s=5)
def memory_check(args):
    from hf_seqmodels.kernels import memory_ffn

    names = ("y", "dx", "dw_gate", "dw_up", "dw_down")
    rows, ok = [], True
    for B, T, S, d, dtype in MEMORY_TINY_CASES if args.tiny else MEMORY_CHECK_CASES:
        row = dict(shape=f"B{B} T{T} S{S} d{d}", dtype=dtype_name(dtype))

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
                    r[f"{backend}_ms"] = bench(args, lambda: memory_ffn(*leaves, backend=backend).backward(dy), leaves)
                r["torch/triton"] = r["torch_ms"] / r["triton_ms"]

        _guarded(row, check)
        ok &= bool(row["ok"])
        rows.append(row)
    print_table(
        "memory_ffn: Triton vs PyTorch path in fp64 (max abs error / max |ref|); fwd+bwd median ms",
        rows,
        ["shape", "dtype", *names, "ok", "triton_ms", "torch_ms", "torch/triton", "error"],
    )
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
    print_table(
        "Packed sequences: Triton vs PyTorch path in fp64 (max abs error / max |ref|)",
        rows,
        ["op", "lengths", "worst", "reverse", "ok", "error"],
    )
    return {"ok": ok, "rows": rows}
