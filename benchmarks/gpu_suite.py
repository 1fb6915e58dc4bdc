"""One prepared run for a GPU machine: check the Triton kernels against the PyTorch path, then time them beside the
peers a user would pick instead, in the same process.

    python3 -m pip install --no-deps --no-build-isolation -e .   # once: provides hf_seqmodels.kernels
    python3 benchmarks/gpu_suite.py [--sections gla_check,pararnn_check,pararnn_bench] [--out DIR]

Prints a table per section and writes ``gpu_suite.json`` and ``gpu_suite.png`` to ``--out`` (default ``$OUT``, else
``./out``). Sections live in ``SECTIONS``: a new one is a function ``(args) -> dict`` registered with
``@section(name)``; it returns ``{"ok": bool, "rows": [dict, ...]}`` and may add ``"plot": fn(ax_list)`` and
``"panels": n`` (how many axes it draws on). The exit status is 1 when a check failed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

SECTIONS: dict = {}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def print_table(title, rows, columns):
    print(f"\n== {title}")
    widths = [max([len(c)] + [len(_fmt(r.get(c))) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.3f}"
    return str(x)


# ---------------------------------------------------------------------------------------------------------------
# GLA: correctness on the GPU


def _gla_inputs(B, T, H, K, V, dtype, gates="normal", device="cuda"):
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
    s0 = torch.randn(B, H, K, V, device=device)
    return q, k, v, g.to(dtype), s0


def _run_grads(fn, inputs, weights):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    q, k, v, g, s0 = leaves
    o, S = fn(q, k, v, g, q.shape[-1] ** -0.5, s0, True)
    ((o.float() * weights[0]).sum() + (S * weights[1]).sum()).backward()
    return [o.detach(), S.detach()] + [x.grad for x in leaves]


def _rel_err(got, ref, scale=None):
    scale = float(ref.abs().max()) if scale is None else scale
    return float((got.float() - ref.float()).abs().max()) / max(scale, 1e-30)


@section("gla_check")
def gla_check(args):
    from hf_seqmodels.kernels.gla.chunk_torch import chunk_gla_torch
    from hf_seqmodels.kernels.gla.chunk_triton import chunk_gla_triton
    from hf_seqmodels.kernels.gla.recurrent_triton import fused_recurrent_gla_triton

    cases = [  # B, T, H, K, V, dtype, gates
        (2, 1000, 4, 128, 128, torch.bfloat16, "normal"),
        (2, 300, 4, 64, 128, torch.float32, "normal"),
        (3, 77, 3, 100, 36, torch.float32, "steep"),
        (1, 1, 2, 128, 128, torch.bfloat16, "normal"),
    ]
    names = ("o", "state", "dq", "dk", "dv", "dg", "dh0")
    rows, ok = [], True
    for B, T, H, K, V, dtype, gates in cases:
        inputs = _gla_inputs(B, T, H, K, V, dtype, gates)
        weights = (torch.randn(B, T, H, V, device="cuda"), torch.randn(B, H, K, V, device="cuda"))
        ref = _run_grads(chunk_gla_torch, inputs, weights)
        q, k = inputs[0].float(), inputs[1].float()
        dg_scale = max(float(ref[5].abs().max()), float((q * ref[2]).abs().max()), float((k * ref[3]).abs().max()))
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        for op_name, fn in (("chunk", chunk_gla_triton), ("recurrent", fused_recurrent_gla_triton)):
            row = dict(op=op_name, shape=f"B{B} T{T} H{H} K{K} V{V}", dtype=str(dtype).replace("torch.", ""),
                       gates=gates)
            try:
                got = _run_grads(fn, inputs, weights)
                errs = {n: _rel_err(a, b, dg_scale if n == "dg" else None) for n, a, b in zip(names, got, ref)}
                row.update(errs, worst=max(errs.values()), ok=max(errs.values()) < tol)
            except Exception as e:  # report and carry on to the timings
                traceback.print_exc()
                row.update(ok=False, error=repr(e))
            ok &= bool(row["ok"])
            rows.append(row)
    print_table("GLA Triton vs PyTorch path on the GPU (max abs error / max |ref|)", rows,
                ["op", "shape", "dtype", "gates", *names, "ok"])
    return {"ok": ok, "rows": rows}


@section("packed_check")
def packed_check(args):
    """Packed sequences (cu_seqlens) on the GPU: Triton path against the torch path, values and gradients."""
    from hf_seqmodels.kernels import chunk_gla, fused_recurrent_gla, linear_scan

    lengths = [700, 1, 129, 64, 33]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    T, N, H, K, V = sum(lengths), len(lengths), 4, 64, 64
    rows, ok = [], True
    for name, op in (("chunk_gla", chunk_gla), ("fused_recurrent_gla", fused_recurrent_gla)):
        q, k, v, g, _ = _gla_inputs(1, T, H, K, V, torch.float32)
        s0 = torch.randn(N, H, K, V, device="cuda")
        weights = (torch.randn(1, T, H, V, device="cuda"), torch.randn(N, H, K, V, device="cuda"))
        res = {}
        for backend in ("triton", "torch"):
            fn = lambda q, k, v, g, scale, s0, final: op(q, k, v, g, scale, s0, final, backend=backend, cu_seqlens=cu)  # noqa: E731
            res[backend] = _run_grads(fn, (q, k, v, g, s0), weights)
        errs = {n: _rel_err(a, b) for n, a, b in zip(("o", "state", "dq", "dk", "dv", "dg", "dh0"), res["triton"], res["torch"])}
        row = dict(op=name, lengths=str(lengths), worst=max(errs.values()), ok=max(errs.values()) < 1e-3)
        ok &= row["ok"]
        rows.append(row)
    a, b = torch.rand(1, T, 256, device="cuda"), torch.randn(1, T, 256, device="cuda")
    h0 = torch.randn(N, 256, device="cuda")
    err = _rel_err(linear_scan(a, b, h0, backend="triton", cu_seqlens=cu), linear_scan(a, b, h0, backend="torch", cu_seqlens=cu))
    rows.append(dict(op="linear_scan", lengths=str(lengths), worst=err, ok=err < 1e-4))
    ok &= rows[-1]["ok"]
    print_table("Packed sequences: Triton vs PyTorch path on the GPU (max abs error / max |ref|)", rows,
                ["op", "lengths", "worst", "ok"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# GLA: timings beside fla and SDPA


def _bench(fn, grads=()):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(grads), return_mode="median")


def _peak_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _gla_methods(B, T, H, D):
    """name -> (forward callable, forward+backward callable, leaves) on fresh bf16 inputs; fla only if installed."""
    import torch.nn.functional as F

    from hf_seqmodels.kernels import chunk_gla

    dt = torch.bfloat16
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    g = (F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16).to(dt).requires_grad_()
    do = torch.randn(B, T, H, D, device="cuda", dtype=dt)
    methods = {}

    def ours():
        return chunk_gla(q, k, v, g, backend="triton")[0]

    methods["ours"] = (ours, lambda: ours().backward(do), (q, k, v, g))
    try:
        import inspect

        from fla.ops.gla import chunk_gla as fla_chunk_gla

        # older fla releases default to the [B, H, T, K] layout
        layout = {"head_first": False} if "head_first" in inspect.signature(fla_chunk_gla).parameters else {}

        def fla():
            return fla_chunk_gla(q, k, v, g, **layout)[0]

        methods["fla"] = (fla, lambda: fla().backward(do), (q, k, v, g))
    except ImportError:
        pass
    qs, ks, vs = (torch.randn(B, H, T, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    dos = torch.randn(B, H, T, D, device="cuda", dtype=dt)

    def sdpa():
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

    methods["sdpa"] = (sdpa, lambda: sdpa().backward(dos), (qs, ks, vs))
    return methods


def _plot_gla_bench(axes, rows, title):
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        sel = [r for r in rows if r["mode"] == mode]
        names = [n for n in ("ours", "fla", "sdpa") if sel and all(r.get(f"{n}_ms") for r in sel)]
        if not names:
            continue
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([j + i * width for j in range(len(sel))], [r[f"{n}_ms"] for r in sel], width, label=n)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(sel))], [r["shape"] for r in sel])
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{title}, {mode}")
        ax.legend()


@section("gla_bench")
def gla_bench(args):
    try:
        import fla  # noqa: F401
    except ImportError:
        print("fla: not installed")
    H, D = 16, 128
    rows, ok = [], True
    first_call = None
    for B, T in args.gla_shapes:
        methods = _gla_methods(B, T, H, D)
        if first_call is None:  # the first forward+backward compiles every kernel (unless Triton's cache has them)
            t0 = time.perf_counter()
            methods["ours"][1]()
            torch.cuda.synchronize()
            first_call = time.perf_counter() - t0
        agree = None
        if "fla" in methods:
            try:
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
                            row[f"{name}_ms"] = _bench(fwd)
                            row[f"{name}_MiB"] = _peak_mib(fwd)
                    else:
                        row[f"{name}_ms"] = _bench(fwd_bwd, leaves)
                        row[f"{name}_MiB"] = _peak_mib(fwd_bwd)
                except Exception:
                    traceback.print_exc()
                    ok = ok and name != "ours"
            if row.get("ours_ms"):
                row["ours/fla"] = row["ours_ms"] / row["fla_ms"] if row.get("fla_ms") else None
                row["ours/sdpa"] = row["ours_ms"] / row["sdpa_ms"] if row.get("sdpa_ms") else None
            row["max_err_vs_fla"] = agree
            rows.append(row)
        del methods
        torch.cuda.empty_cache()
    print_table(f"GLA chunked, H{H} D{D} bf16, median ms (our first fwd+bwd, compiling: {first_call:.1f} s)", rows,
                ["shape", "mode", "ours_ms", "fla_ms", "sdpa_ms", "ours/fla", "ours/sdpa", "ours_MiB", "fla_MiB",
                 "sdpa_MiB", "max_err_vs_fla"])

    def plot(axes):
        _plot_gla_bench(axes, rows, f"GLA H{H} D{D} bf16")

    return {"ok": ok, "rows": rows, "first_call_s": first_call, "plot": plot, "panels": 2}


# ---------------------------------------------------------------------------------------------------------------
# ParaRNN: the fused Newton kernel against the PyTorch path (values and gradients)

PARARNN_CHECK_CASES = [  # B, T, D, dtype, h0, mask
    (2, 1000, 96, torch.float32, True, False),
    (3, 333, 80, torch.float32, True, True),
    (2, 500, 64, torch.float64, True, True),
    (2, 2048, 256, torch.bfloat16, False, False),
    (4, 1, 64, torch.float32, True, False),
]
PARARNN_TINY_CASES = [(2, 9, 5, torch.float32, True, True)]  # for a run in the Triton interpreter
_PARARNN_TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2}


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


def pararnn_check_rows(cases, device="cuda"):
    """Fused Triton solve (values, du, da, dh0) vs the PyTorch path in fp64 on the same inputs, then the fallback
    (max_iter=0: the sequential kernel) and the cells' dispatch. Returns (rows, ok)."""
    import warnings

    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm
    from hf_seqmodels.layers.pararnn import ParaGRUCell, ParaLSTMCell

    rows, ok = [], True
    for cell, fn, cls in (("gru", fused_newton_gru, ParaGRUCell), ("lstm", fused_newton_lstm, ParaLSTMCell)):
        for B, T, D, dtype, h0, mask in cases:
            row = dict(cell=cell, shape=f"B{B} T{T} D{D}", dtype=str(dtype).replace("torch.", ""), h0=h0, mask=mask)
            try:
                inputs = _pararnn_inputs(cell, B, T, D, dtype, h0, mask, device)
                weight = torch.randn(B, T, D, *(() if cell == "gru" else (2,)), dtype=torch.float64, device=device)
                info = fn(*inputs, backend="triton", on_fail="raise", return_info=True)[1]
                got = _pararnn_grads(lambda *x: fn(*x, backend="triton", on_fail="raise"), inputs, weight)
                ref_inputs = [x.double() if x is not None else None for x in inputs]
                ref = _pararnn_grads(lambda *x: fn(*x, backend="torch", on_fail="raise"), ref_inputs, weight)
                names = ["h", "du", "da"] + (["dh0"] if h0 else [])
                errs = {n: _rel_err(g, r) for n, g, r in zip(names, got, ref)}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fallback = fn(*inputs, backend="triton", max_iter=0)
                errs["fallback_h"] = _rel_err(fallback, ref[0])
                worst = max(errs.values())
                row.update(errs, iters=info.iterations, worst=worst, ok=worst < _PARARNN_TOL[dtype])
            except Exception as e:  # report and carry on
                traceback.print_exc()
                row.update(ok=False, error=repr(e))
            ok &= bool(row["ok"])
            rows.append(row)
        # the cell dispatches to the fused kernel on CUDA (parallel mode) and matches its sequential mode
        row = dict(cell=cell, shape="cell B2 T64 D16", dtype="float32", mask=True)
        try:
            layer = cls(8, 16).to(device)
            x = torch.randn(2, 64, 8, device=device)
            m = torch.ones(2, 64, device=device)
            m[1, :20] = 0
            with torch.no_grad():
                par, seq = layer(x, mask=m)[0], layer(x, mask=m, mode="sequential")[0]
            fused_used = layer._fused(layer.input_projection(x)) is not None
            err = _rel_err(par, seq)
            row.update(h=err, worst=err, fused_used=fused_used, ok=err < 1e-4 and (fused_used or device != "cuda"))
        except Exception as e:
            traceback.print_exc()
            row.update(ok=False, error=repr(e))
        ok &= bool(row["ok"])
        rows.append(row)
    return rows, ok


@section("pararnn_check")
def pararnn_check(args):
    rows, ok = pararnn_check_rows(PARARNN_CHECK_CASES)
    print_table("ParaRNN fused Triton Newton vs PyTorch path in fp64 (max abs error / max |ref|)", rows,
                ["cell", "shape", "dtype", "h0", "mask", "iters", "h", "du", "da", "dh0", "fallback_h", "fused_used",
                 "ok"])
    return {"ok": ok, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# ParaRNN: timings beside cuDNN GRU/LSTM and a sequential loop


def pararnn_methods(cell, B, T, H, dtype, device="cuda", backend=None):
    """name -> (forward, forward+backward or None, leaves) for one ParaGRU/ParaLSTM layer (input projection
    included) solved by the fused kernel, by the generic Newton solver, step by step ("loop", forward only), and the
    same-size cuDNN torch.nn.GRU/LSTM."""
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


def _time_capped(fn, reps=3, budget_s=4.0):
    """Median ms of up to ``reps`` runs after one warm-up, stopping once ``budget_s`` is spent (slow loops)."""
    fn()
    torch.cuda.synchronize()
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < reps and (not times or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


@section("pararnn_bench")
def pararnn_bench(args):
    from hf_seqmodels.kernels.pararnn import fused_newton_gru, fused_newton_lstm

    H, dt = args.pararnn_hidden, torch.bfloat16
    rows, ok, first_call = [], True, {}
    for cell in ("gru", "lstm"):
        for B, T in args.pararnn_shapes:
            methods = pararnn_methods(cell, B, T, H, dt)
            if cell not in first_call:  # the first fused forward+backward compiles its kernels
                t0 = time.perf_counter()
                methods["fused"][1]()
                torch.cuda.synchronize()
                first_call[cell] = time.perf_counter() - t0
            fn = fused_newton_gru if cell == "gru" else fused_newton_lstm
            u = torch.randn(B, T, 3, H, device="cuda", dtype=dt)
            a = torch.randn(3 if cell == "gru" else 5, H, device="cuda")
            a = (a * (0.5 / a.norm(dim=-1, keepdim=True))).to(dt)
            iters = fn(u, a, return_info=True)[1].iterations
            for mode in ("fwd", "fwd+bwd"):
                row = dict(cell=cell, shape=f"B{B} T{T} H{H}", T=T, mode=mode, fused_iters=iters)
                for name, (fwd, fwd_bwd, leaves) in methods.items():
                    try:
                        if mode == "fwd":
                            with torch.no_grad():
                                row[f"{name}_ms"] = _time_capped(fwd) if name == "loop" else _bench(fwd)
                        elif fwd_bwd is not None:
                            row[f"{name}_ms"] = _bench(fwd_bwd, leaves)
                    except Exception:
                        traceback.print_exc()
                        ok = ok and name != "fused"
                f = row.get("fused_ms")
                for name in ("loop", "cudnn", "generic"):
                    if f and row.get(f"{name}_ms"):
                        row[f"{name}/fused"] = row[f"{name}_ms"] / f
                rows.append(row)
            del methods, u, a
            torch.cuda.empty_cache()
    tile_rows = _pararnn_tile_sweep(args, H, dt) if args.pararnn_tiles else []
    compile_s = ", ".join(f"{c} {s:.1f} s" for c, s in first_call.items())
    print_table(f"ParaRNN layer (input projection + solve), bf16, median ms; speedups = other/fused "
                f"(first fused fwd+bwd, compiling: {compile_s})", rows,
                ["cell", "shape", "mode", "fused_ms", "generic_ms", "cudnn_ms", "loop_ms", "loop/fused",
                 "cudnn/fused", "generic/fused", "fused_iters"])

    def plot(axes):
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            sel = [r for r in rows if r["mode"] == mode]
            names = [n for n in ("fused", "generic", "cudnn", "loop") if any(r.get(f"{n}_ms") for r in sel)]
            width = 0.8 / max(1, len(names))
            for i, n in enumerate(names):
                ax.bar([j + i * width for j in range(len(sel))], [r.get(f"{n}_ms") or 0 for r in sel], width, label=n)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(sel))],
                          [f"{r['cell']} T{r['T']}" for r in sel])
            ax.set_yscale("log")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"ParaRNN H{H} bf16, {mode}")
            ax.legend()

    return {"ok": ok, "rows": rows, "tile_rows": tile_rows, "first_call_s": first_call, "plot": plot, "panels": 2}


def _pararnn_tile_sweep(args, H, dt):
    """Fused fwd+bwd time per (BLOCK_T, BLOCK_D) at the first --pararnn-shapes entry (each new pair compiles)."""
    from hf_seqmodels.kernels.pararnn import fused_triton

    saved = dict(fused_triton.MAX_BLOCK_T), fused_triton.MAX_BLOCK_D
    B, T = args.pararnn_shapes[0]
    rows = []
    try:
        for cell in ("gru", "lstm"):
            fwd, fwd_bwd, leaves = pararnn_methods(cell, B, T, H, dt)["fused"]
            for bt, bd in args.pararnn_tiles:
                fused_triton.MAX_BLOCK_T[cell], fused_triton.MAX_BLOCK_D = bt, bd
                row = dict(cell=cell, shape=f"B{B} T{T} H{H}", tiles=f"{bt}x{bd}")
                try:
                    with torch.no_grad():
                        row["fwd_ms"] = _bench(fwd)
                    row["fwd+bwd_ms"] = _bench(fwd_bwd, leaves)
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, in order (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--out", default=os.environ.get("OUT") or "out",
                   help="directory for gpu_suite.json and gpu_suite.png (default: $OUT if set, else ./out)")
    p.add_argument("--gla-shapes", default="8x2048,2x8192,1x32768",
                   help="BxT pairs for gla_bench (H16 D128 bf16), default 8x2048,2x8192,1x32768")
    p.add_argument("--pararnn-shapes", default="8x2048,8x8192",
                   help="BxT pairs for pararnn_bench (bf16, hidden --pararnn-hidden), default 8x2048,8x8192")
    p.add_argument("--pararnn-hidden", type=int, default=1024, help="hidden size for pararnn_bench (default 1024)")
    p.add_argument("--pararnn-tiles", default="",
                   help="optional BLOCK_TxBLOCK_D pairs (e.g. 32x32,64x32,128x16) to time the fused kernels with in\n"
                        "pararnn_bench, at the first --pararnn-shapes entry (default: none, the built-in tiles)")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    args.gla_shapes = [tuple(int(x) for x in s.split("x")) for s in args.gla_shapes.split(",") if s]
    args.pararnn_shapes = [tuple(int(x) for x in s.split("x")) for s in args.pararnn_shapes.split(",") if s]
    args.pararnn_tiles = [tuple(int(x) for x in s.split("x")) for s in args.pararnn_tiles.split(",") if s]
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
    fig.savefig(path, dpi=120)
    return path


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; nothing to run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), device=torch.cuda.get_device_name(),
                host=platform.node(), torch=torch.__version__, triton=triton.__version__)
    try:
        import fla

        meta["fla"] = getattr(fla, "__version__", "installed")
    except ImportError:
        meta["fla"] = None
    print(json.dumps(meta))
    results, ok = {}, True
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            results[name] = SECTIONS[name](args)
        except Exception as e:
            traceback.print_exc()
            results[name] = {"ok": False, "error": repr(e)}
        results[name]["seconds"] = time.perf_counter() - t0
        ok &= bool(results[name].get("ok"))
    png = None
    try:
        png = _plot(results, out / "gpu_suite.png")
    except Exception:
        traceback.print_exc()
    payload = dict(meta, ok=ok, sections={n: {k: v for k, v in r.items() if k != "plot"} for n, r in results.items()})
    (out / "gpu_suite.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nwrote {out / 'gpu_suite.json'}" + (f" and {png}" if png else "") + f"; all ok: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
