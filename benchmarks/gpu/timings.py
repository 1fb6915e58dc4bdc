"""The GPU suite's timings: our kernels beside the peers a user would pick instead.

    gla_bench      chunk_gla beside fla's chunk_gla and causal SDPA (fwd, fwd+bwd, peak memory), the difference of
                   ours from fla, and the cold first fwd+bwd of both (from the warm-up, ``benchmarks.gpu.warmup``);
                   with a gate per head (g [B, T, H] at Mamba-2 decay rates), ours ("ours_head", the scalar-gate
                   kernels) beside fla's chunk_simple_gla ("fla_head")
    pararnn_bench  a ParaGRU/ParaLSTM layer solved by the fused kernel, by the generic Newton solver, step by step,
                   and the same-size cuDNN GRU/LSTM; optionally the fused kernel at other tile sizes

Times are medians of triton's ``do_bench`` on the GPU, of a few wall-clock runs on the CPU (``common.bench``).
"""

from __future__ import annotations

import time
import traceback

import torch

from benchmarks.gpu.common import BF16, SECTIONS, bench, peak_mib, print_table, remaining, section, sync, time_capped
from benchmarks.gpu.warmup import (
    finish_warmup,
    fla_chunk_gla_fn,
    fla_chunk_simple_gla_fn,
    gla_bench_inputs,
    ours_chunk_gla_fn,
)


# -- GLA: beside fla and SDPA ---------------------------------------------------------------------------------------
def _gla_methods(args, B, T, H, D, fla, fla_simple=None):
    """name -> (forward, forward+backward, leaves) on fresh bf16 inputs; ``fla`` is fla's chunk_gla or None,
    ``fla_simple`` its chunk_simple_gla or None (the "_head" methods: a gate per head)."""
    import torch.nn.functional as F

    q, k, v, g = gla_bench_inputs(B, T, H, D, args.device)
    do = torch.randn(B, T, H, D, device=args.device, dtype=BF16)
    ours = ours_chunk_gla_fn()
    methods = {"ours": (lambda: ours(q, k, v, g), lambda: ours(q, k, v, g).backward(do), (q, k, v, g))}
    if fla is not None:
        methods["fla"] = (lambda: fla(q, k, v, g), lambda: fla(q, k, v, g).backward(do), (q, k, v, g))
    head = gla_bench_inputs(B, T, H, D, args.device, scalar_gate=True)
    methods["ours_head"] = (lambda: ours(*head), lambda: ours(*head).backward(do), head)
    if fla_simple is not None:
        methods["fla_head"] = (lambda: fla_simple(*head), lambda: fla_simple(*head).backward(do), head)
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


@section("gla_bench", est_s=110, tiny_est_s=20)
def gla_bench(args):
    H, D = args.gla_hd
    warm = args.warmup
    # wait for fla's compile only as long as the sections after this one (and this one's timings) keep their time
    wait = min(args.fla_wait_s, remaining(args) - args.later_est_s - SECTIONS["gla_bench"][args.est_key])
    if warm is None:
        report, fla_reason = {}, "the warm-up process was not started"
    else:
        report, fla_reason = finish_warmup(args, warm, wait)
    fla = None
    if fla_reason is None:
        try:  # the warm-up imported it, but this process may still differ: any failure only costs the column
            fla = fla_chunk_gla_fn()
        except (Exception, SystemExit) as e:
            fla_reason = f"fla import failed in the suite's process: {type(e).__name__}: {e}"[:500]
    if fla is not None and args.device != "cuda" and not args.fla_on_cpu:
        fla, fla_reason = None, f"fla {report.get('fla_version')} imported, but its Triton kernels need a CUDA device"
    print(f"fla: {'skipped: ' + fla_reason if fla_reason else 'fla ' + str(report.get('fla_version'))}")
    fla_simple, simple_reason = None, fla_reason
    if fla is not None:
        try:
            fla_simple = fla_chunk_simple_gla_fn()
        except (Exception, SystemExit) as e:
            simple_reason = f"fla's chunk_simple_gla import failed: {type(e).__name__}: {e}"[:500]
    rows, ok, first_call = [], True, {}
    for B, T in args.gla_shapes:
        if remaining(args) < 20:
            rows.append(dict(shape=f"B{B} T{T}", B=B, T=T, skipped="budget"))
            continue
        methods = _gla_methods(args, B, T, H, D, fla, fla_simple)
        # the first fwd+bwd in this process (fla: its autotuning on this idle GPU)
        for name in ("ours", "fla", "ours_head", "fla_head"):
            if name in methods and name not in first_call:
                try:
                    sync(args)
                    t0 = time.perf_counter()
                    methods[name][1]()
                    sync(args)
                    first_call[name] = time.perf_counter() - t0
                except Exception as e:
                    traceback.print_exc()
                    if name == "fla":
                        fla_reason = f"fla's first call failed: {type(e).__name__}: {e}"[:500]
                        methods.pop("fla")
                        fla = None
                    elif name == "fla_head":
                        simple_reason = f"fla's chunk_simple_gla first call failed: {type(e).__name__}: {e}"[:500]
                        methods.pop("fla_head")
                        fla_simple = None
                    else:
                        ok = False
        agree = {}
        for ours_name, peer in (("ours", "fla"), ("ours_head", "fla_head")):
            if peer in methods:
                try:
                    with torch.no_grad():
                        o_ours, o_fla = methods[ours_name][0]().float(), methods[peer][0]().float()
                    agree[peer] = float((o_ours - o_fla).abs().max() / o_fla.abs().max())
                except Exception:  # a broken peer must not stop the rest of the run
                    traceback.print_exc()
        for mode in ("fwd", "fwd+bwd"):
            row = dict(shape=f"B{B} T{T}", B=B, T=T, mode=mode)
            for name, (fwd, fwd_bwd, leaves) in methods.items():
                try:
                    if mode == "fwd":
                        with torch.no_grad():
                            row[f"{name}_ms"] = bench(args, fwd)
                            row[f"{name}_MiB"] = peak_mib(args, fwd)
                    else:
                        row[f"{name}_ms"] = bench(args, fwd_bwd, leaves)
                        row[f"{name}_MiB"] = peak_mib(args, fwd_bwd)
                except Exception as e:
                    traceback.print_exc()
                    row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
                    ok = ok and not name.startswith("ours")
            for peer in ("fla", "sdpa"):  # peer time / our time: above 1, ours is faster
                if row.get("ours_ms") and row.get(f"{peer}_ms"):
                    row[f"{peer}/ours"] = row[f"{peer}_ms"] / row["ours_ms"]
            if row.get("ours_head_ms") and row.get("fla_head_ms"):
                row["fla_head/ours_head"] = row["fla_head_ms"] / row["ours_head_ms"]
            row["max_err_vs_fla"] = agree.get("fla")
            row["max_err_head_vs_fla"] = agree.get("fla_head")
            rows.append(row)
        del methods
        if args.device == "cuda":
            torch.cuda.empty_cache()
    cold = {
        "ours": report.get("ours_first_fwd_bwd_s"),
        "fla": report.get("fla_first_fwd_bwd_s"),
        "fla_one_process_estimate_s": report.get("fla_first_calls_sum_s"),
    }
    print_table(
        f"GLA chunked, H{H} D{D} bf16, median ms; peer/ours above 1: ours faster",
        rows,
        [
            "shape",
            "mode",
            "ours_ms",
            "fla_ms",
            "sdpa_ms",
            "fla/ours",
            "sdpa/ours",
            "ours_MiB",
            "fla_MiB",
            "sdpa_MiB",
            "max_err_vs_fla",
            "skipped",
        ],
    )
    print_table(
        f"GLA chunked with a gate per head (g [B, T, H], 3-8 nats a step), H{H} D{D} bf16, median ms: ours beside "
        "fla's chunk_simple_gla; fla_head/ours_head above 1: ours faster",
        rows,
        ["shape", "mode", "ours_head_ms", "fla_head_ms", "fla_head/ours_head", "ours_head_MiB", "fla_head_MiB"]
        + ["max_err_head_vs_fla", "skipped"],
    )
    print(
        f"cold first fwd+bwd (fresh process, empty Triton cache, beside the checks): ours {cold['ours']} s; fla "
        f"(compile + autotune, its configs split over {report.get('shards')} processes) {cold['fla']} s per shape, "
        f"{cold['fla_one_process_estimate_s']} s summed over the processes (~one process); first call in this "
        f"process (fla: autotuning on the idle GPU from the compiled kernels): {first_call}"
    )
    ok = ok and any(r.get("ours_ms") for r in rows)

    def plot(axes):
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            _plot_bars(
                ax,
                [r for r in rows if r.get("mode") == mode],
                ("ours", "fla", "sdpa", "ours_head", "fla_head"),
                lambda r: r["shape"],
                f"GLA H{H} D{D} bf16, {mode}",
            )

    return {
        "ok": ok,
        "rows": rows,
        "fla": {"skipped": fla_reason, "version": report.get("fla_version")},
        "fla_simple_gla": {"skipped": simple_reason, "first_fwd_bwd_s": report.get("fla_simple_first_fwd_bwd_s")},
        "cold_first_fwd_bwd_s": cold,
        "first_call_in_process_s": first_call,
        "warmup": report,
        "plot": plot,
        "panels": 2,
    }


# -- ParaRNN: beside cuDNN GRU/LSTM and a sequential loop ---------------------------------------------------------


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
            if remaining(args) < 15:
                rows.append(dict(cell=cell, shape=f"B{B} T{T} H{H}", T=T, skipped="budget"))
                continue
            methods = pararnn_methods(cell, B, T, H, dt, device=dev)
            if cell not in first_call:  # the first fused forward+backward in this process (compiled by the checks?)
                sync(args)
                t0 = time.perf_counter()
                methods["fused"][1]()
                sync(args)
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
                                row[f"{name}_ms"] = (
                                    time_capped(args, fwd, budget_s=3.0) if name == "loop" else bench(args, fwd)
                                )
                        elif fwd_bwd is not None:
                            row[f"{name}_ms"] = bench(args, fwd_bwd, leaves)
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
    print_table(
        f"ParaRNN layer (input projection + solve), bf16, median ms; other/fused above 1: fused faster "
        f"(first fused fwd+bwd in this process: {compile_s})",
        rows,
        [
            "cell",
            "shape",
            "mode",
            "fused_ms",
            "generic_ms",
            "cudnn_ms",
            "loop_ms",
            "loop/fused",
            "cudnn/fused",
            "generic/fused",
            "fused_iters",
            "skipped",
        ],
    )
    ok = ok and any(r.get("fused_ms") for r in rows)

    def plot(axes):
        for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
            _plot_bars(
                ax,
                [r for r in rows if r.get("mode") == mode],
                ("fused", "generic", "cudnn", "loop"),
                lambda r: f"{r['cell']} T{r['T']}",
                f"ParaRNN H{H} bf16, {mode}",
                log=True,
            )

    return {
        "ok": ok,
        "rows": rows,
        "tile_rows": tile_rows,
        "first_call_in_process_s": first_call,
        "plot": plot,
        "panels": 2,
    }


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
                        row["fwd_ms"] = bench(args, fwd)
                    row["fwd+bwd_ms"] = bench(args, fwd_bwd, leaves)
                except Exception as e:
                    traceback.print_exc()
                    row["error"] = repr(e)
                rows.append(row)
    finally:
        fused_triton.MAX_BLOCK_T.update(saved[0])
        fused_triton.MAX_BLOCK_D = saved[1]
    print_table(
        "ParaRNN fused kernel by tile size (BLOCK_T x BLOCK_D), bf16, median ms",
        rows,
        ["cell", "shape", "tiles", "fwd_ms", "fwd+bwd_ms", "error"],
    )
    return rows
