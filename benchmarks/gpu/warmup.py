"""The fla warm-up: processes started with the suite that compile fla's chunk_gla beside the checks.

fla autotunes every kernel on its first call (~280 configs for chunk_gla forward and backward, ~1 s of compile
each), too long for one process within the suite's budget. So ``--fla-shards`` processes start with the suite, share
one empty Triton cache, and each compiles its share of every autotuner's configs (``_shard_autotuning``); shard 0 first
times our chunk_gla's first forward+backward (cold). gla_bench (``benchmarks.gpu.timings``) then waits for them
(``finish_warmup``), merges their compiled kernels into its own cache, and imports fla only if every shard imported
it: an fla that fails to import, crashes or hangs costs only fla's column, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.gpu.common import BF16, log_tail, read_report, spawn_child, sync, write_atomic


def gla_bench_inputs(B, T, H, D, device, requires_grad=True, scalar_gate=False):
    """bf16 q, k, v and the gate: per key, the GLA layer's (logsigmoid / 16), or ``scalar_gate``: one per head
    ``[B, T, H]`` at Mamba-2 decay rates (3-8 nats a step)."""
    import torch.nn.functional as F

    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=BF16, requires_grad=requires_grad) for _ in range(3))
    if scalar_gate:
        g = -3 - 5 * torch.rand(B, T, H, device=device)
    else:
        g = F.logsigmoid(torch.randn(B, T, H, D, device=device)) / 16
    return q, k, v, g.to(BF16).requires_grad_(requires_grad)


def fla_chunk_gla_fn():
    """fla's chunk_gla, called in our [B, T, H, K] layout (older fla releases default to [B, H, T, K])."""
    import inspect

    from fla.ops.gla import chunk_gla as fla_chunk_gla

    layout = {"head_first": False} if "head_first" in inspect.signature(fla_chunk_gla).parameters else {}

    def fla(q, k, v, g):
        return fla_chunk_gla(q, k, v, g, **layout)[0]

    return fla


def fla_chunk_simple_gla_fn():
    """fla's chunk_simple_gla (a gate per head, ``g`` [B, T, H]), in our [B, T, H, K] layout."""
    import inspect

    from fla.ops.simple_gla import chunk_simple_gla

    layout = {"head_first": False} if "head_first" in inspect.signature(chunk_simple_gla).parameters else {}

    def fla(q, k, v, g):
        return chunk_simple_gla(q, k, v, g, **layout)[0]

    return fla


def ours_chunk_gla_fn():
    from hf_seqmodels.kernels import chunk_gla

    def ours(q, k, v, g):
        return chunk_gla(q, k, v, g, backend="triton")[0]

    return ours


def _first_fwd_bwd(args, fn, B, T, H, D, scalar_gate=False):
    q, k, v, g = gla_bench_inputs(B, T, H, D, args.device, scalar_gate=scalar_gate)
    sync(args)
    t0 = time.perf_counter()
    fn(q, k, v, g).float().sum().backward()
    sync(args)
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
    write = lambda: write_atomic(args.child_out, out)  # noqa: E731
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
    # fla's chunk_simple_gla (a gate per head), timed beside our scalar-gate kernels: its failure, or this process
    # stopped here, costs only its column (and the suite's process compiles what is left on its first call)
    out["phase"], out["fla_simple_first_fwd_bwd_s"] = "simple_gla", {}
    try:
        simple = fla_chunk_simple_gla_fn()
        for B, T in args.gla_shapes:
            out["fla_simple_first_fwd_bwd_s"][f"B{B} T{T}"] = _first_fwd_bwd(args, simple, B, T, H, D, True)
            write()
    except (Exception, SystemExit) as e:
        traceback.print_exc()
        out["fla_simple_error"] = f"fla's chunk_simple_gla failed: {type(e).__name__}: {e}"[:500]
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
            proc = spawn_child(args, "warmup", out, f, env, ("--child-shard", f"{shard}/{args.fla_shards}"))
        procs.append(dict(proc=proc, out=out, log=log))
    return dict(procs=procs, cache=cache, folder=folder, started=time.monotonic())


def stop_warmup(warm):
    for p in warm["procs"]:
        if p["proc"].poll() is None:
            p["proc"].kill()
            p["proc"].wait()


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
        rep = read_report(p["out"])
        rep.update(returncode=p["proc"].returncode, log_tail=log_tail(p["log"]))
        shards.append(rep)
    _merge_triton_cache(warm["cache"])
    shutil.rmtree(warm["folder"], ignore_errors=True)
    first = shards[0]
    report = dict(
        shards=len(shards),
        seconds_since_start=since,
        fla_version=first.get("fla_version"),
        ours_first_fwd_bwd_s=first.get("ours_first_fwd_bwd_s", first.get("ours_error")),
        log_tail=first["log_tail"],
    )
    times = [sh.get("fla_first_fwd_bwd_s") or {} for sh in shards]
    report["fla_shard_errors"] = [sh["fla_shard_error"] for sh in shards if "fla_shard_error" in sh]
    if all(times) and all(len(t) == len(args.gla_shapes) for t in times):
        # each shard compiled its share of fla's configs: the slowest is the wall time, their sum what one process
        # would take (a user's first call)
        report["fla_first_fwd_bwd_s"] = {k: max(t[k] for t in times) for k in times[0]}
        report["fla_first_calls_sum_s"] = sum(sum(t.values()) for t in times)
    simple = [sh.get("fla_simple_first_fwd_bwd_s") or {} for sh in shards]
    if all(simple) and all(len(t) == len(args.gla_shapes) for t in simple):
        report["fla_simple_first_fwd_bwd_s"] = {k: max(t[k] for t in simple) for k in simple[0]}
    report["fla_simple_errors"] = [sh["fla_simple_error"] for sh in shards if "fla_simple_error" in sh]
    errors = [sh["fla_error"] for sh in shards if "fla_error" in sh]
    if errors:
        return report, errors[0] if errors[0].startswith("fla's") else f"fla import failed: {errors[0]}"
    # a shard stopped while compiling chunk_simple_gla has done all of chunk_gla's work
    bad = [(i, sh) for i, sh in enumerate(shards) if sh["returncode"] != 0 and sh.get("phase") != "simple_gla"]
    if not bad:
        return report, None
    i, sh = bad[0]
    stage = (
        "fla's first calls (compile + autotune)"
        if "fla_import_s" in sh
        else "fla's import"
        if i > 0 or "ours_first_fwd_bwd_s" in sh
        else "the warm-up (our first call)"
    )
    if sh["returncode"] == -9:
        return report, f"{stage} did not finish within {since:.0f} s of the suite's start"
    return (
        report,
        f"{stage} failed in warm-up process {i}: exit status {sh['returncode']}; last output: {sh['log_tail'][-400:]}",
    )
