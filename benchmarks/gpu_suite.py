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
    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_suite --out $OUT 2>&1 | tee $OUT/gpu_suite.log

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

Run it from the repository root (``python -m benchmarks.gpu_suite``; its child processes import ``benchmarks`` from
there too). The parts, in ``benchmarks/gpu/``: ``checks`` (the five checks), ``coverage``, ``warmup`` (fla's warm-up
processes), ``timings`` (gla_bench, pararnn_bench), ``training`` (model_bench and its child process), ``common`` (the
section registry, tables, timers). This module parses the arguments and runs the sections in order, writing the
report after each. A section is a function ``(args) -> dict`` registered with ``@section(name, est_s, tiny_est_s)``;
it returns ``{"ok": bool, "rows": [dict, ...]}`` and may add ``"plot": fn(ax_list)`` and ``"panels": n``.
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

# importing a part registers its sections (run in common.RUN_ORDER)
from benchmarks.gpu import checks, coverage, timings, training  # noqa: F401
from benchmarks.gpu.common import SECTIONS, remaining
from benchmarks.gpu.coverage import install_launch_ledger, remove_launch_ledger, set_section
from benchmarks.gpu.training import DEFAULT_MODELS, MODELS, model_child
from benchmarks.gpu.warmup import start_warmup, stop_warmup, warmup_child


def _pairs(text):
    return [tuple(int(x) for x in s.split("x")) for s in text.split(",") if s]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, in this order (default: all of {', '.join(SECTIONS)})",
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or "out",
        help="directory for gpu_suite.json and gpu_suite.png (default: $OUT if set, else ./out)",
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda (default), or cpu for the smoke run (with --tiny; Triton kernels in the interpreter)",
    )
    p.add_argument("--tiny", action="store_true", help="tiny shapes everywhere (the CPU smoke run)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the whole run in seconds (default 420; --tiny: 900)",
    )
    p.add_argument(
        "--gla-shapes", default=None, help="BxT pairs for gla_bench (H16 D128 bf16), default 8x2048,2x8192,1x32768"
    )
    p.add_argument(
        "--fla-wait-s",
        type=float,
        default=150.0,
        help="most seconds gla_bench waits for the fla warm-up process (started with the suite) after\n"
        "the checks; past it fla's column is skipped with the reason (default 150)",
    )
    p.add_argument(
        "--fla-shards",
        type=int,
        default=None,
        help="warm-up processes that compile fla's autotuning configs between them (default 8; --tiny: 2)",
    )
    p.add_argument(
        "--fla-on-cpu",
        action="store_true",
        help="with --device cpu: run fla's column too (the smoke test uses it with a stand-in fla package)",
    )
    p.add_argument(
        "--pararnn-shapes",
        default=None,
        help="BxT pairs for pararnn_bench (bf16, hidden --pararnn-hidden), default 8x2048,8x8192",
    )
    p.add_argument("--pararnn-hidden", type=int, default=None, help="hidden size for pararnn_bench (default 1024)")
    p.add_argument(
        "--pararnn-tiles",
        default="",
        help="optional BLOCK_TxBLOCK_D pairs (e.g. 32x32,64x32,128x16) to time the fused kernels with in\n"
        "pararnn_bench, at the first --pararnn-shapes entry (default: none, the built-in tiles)",
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"models for model_bench, from {', '.join(MODELS)} (default gla,llama; fla_gla is fla's own\n"
        "GLA-340M, whose cold start alone may not fit the budget)",
    )
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
        fn(list(axes[0][i : i + panels]))
        i += panels
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_json(path, meta, results, t_start, ok):
    payload = dict(
        meta,
        ok=ok,
        elapsed_s=time.monotonic() - t_start,
        sections={n: {k: v for k, v in r.items() if k != "plot"} for n, r in results.items()},
    )
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

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        host=platform.node(),
        device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.machine()})",
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        tiny=args.tiny,
        budget_s=args.budget_s,
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    key = args.est_key = "tiny_est_s" if args.tiny else "est_s"
    meta["plan_s"] = {name: SECTIONS[name][key] for name in args.sections}
    print(json.dumps(meta))
    print(
        f"plan: {', '.join(f'{n} ~{s} s' for n, s in meta['plan_s'].items())}; total ~{sum(meta['plan_s'].values())}"
        f" s of a {args.budget_s:.0f} s budget ({'CPU smoke estimates' if args.tiny else 'H100/H200 estimates'})"
    )
    results, ok = {}, True
    json_path = out / "gpu_suite.json"
    for i, name in enumerate(args.sections):
        est = SECTIONS[name][key]
        args.later_est_s = sum(SECTIONS[n][key] for n in args.sections[i + 1 :])
        left = remaining(args)
        t0 = time.monotonic()
        if left < est / 2:
            results[name] = {"ok": None, "skipped": f"budget: {left:.0f} s left, the section needs ~{est} s"}
            print(f"\n== {name}: skipped ({results[name]['skipped']})")
        else:
            print(f"\n== {name} (estimate ~{est} s, {left:.0f} s left)")
            sys.stdout.flush()
            set_section(name)
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
        print(
            f"-- {name}: {results[name]['seconds']:.1f} s (estimate {est} s), ok={results[name].get('ok')}; "
            f"{time.monotonic() - t_start:.0f} s elapsed"
        )
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
    print(
        f"\nwrote {json_path}" + (f" and {png}" if png else "") + f"; {time.monotonic() - t_start:.0f} s; "
        f"all ok: {ok}" + (f"; skipped: {skipped}" if skipped else "")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
