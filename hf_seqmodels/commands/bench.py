"""``hf-seqmodels bench``: time our ops beside the peers a user would pick instead, over sequence lengths.

Sections live in ``SECTIONS`` (``--section``). A section turns the parsed arguments into a list of :class:`Method`
(ours first, then the peers); the generic pieces, :func:`run_section`, :func:`time_call`, :func:`print_table`,
:func:`plot_results` and :func:`save_json`, work for any section, so a new one only says what to time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .args import (
    HelpFormatter,
    check_output_folder,
    device,
    positive_float,
    positive_int,
    positive_list,
    require_packages,
)

MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Method:
    """One thing to time. ``setup(T, backward)`` builds fresh inputs for length ``T`` and returns the call to time
    (forward only, or forward and backward). ``order`` is how its time grows with ``T`` (1 linear, 2 quadratic): a
    length whose predicted time exceeds ``--max-seconds`` is skipped instead of run."""

    name: str
    setup: Callable[[int, bool], Callable[[], object]]
    order: float = 1.0


@dataclass
class Section:
    """``methods(args, device)`` returns ``[ours, *peers]``; ``describe(args)`` is the shape line of the report."""

    name: str
    methods: Callable[[argparse.Namespace, torch.device], list[Method]]
    describe: Callable[[argparse.Namespace], str]
    default_seq_lens: tuple[int, ...] = field(default=(256, 512, 1024, 2048, 4096, 8192, 16384))
    quick_seq_lens: tuple[int, ...] = field(default=(256, 512, 1024))


SECTIONS: dict[str, Section] = {}


def register_section(section: Section) -> None:
    SECTIONS[section.name] = section


# ----------------------------------------------------------------------------------------------------------------
# Generic timing, table, plot, JSON


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (``repeats`` timed calls after ``warmup`` untimed ones), synchronizing the GPU."""
    if repeats < 1:
        raise ValueError(f"time_call: `repeats` must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def run_section(section: Section, args: argparse.Namespace, device: torch.device, progress: bool = True) -> list[dict]:
    """Time every method of ``section`` at every length and mode. Returns one record per (mode, T, method) with
    ``median_s`` and ``times_s``, or ``skipped`` (the reason) when the method was predicted or seen to be too slow."""
    from tqdm.auto import tqdm

    methods = section.methods(args, device)
    configs = [(mode, T, m) for mode in args.modes for m in methods for T in args.seq_lens]
    records = []
    last = {}  # (mode, method) -> (T, seconds per call) of the last length it ran at
    for mode, T, m in tqdm(configs, desc=f"bench {section.name}", disable=not progress):
        rec = {"section": section.name, "mode": mode, "T": T, "method": m.name}
        prev = last.get((mode, m.name))
        if prev is not None and prev[1] * (T / prev[0]) ** m.order > args.max_seconds:
            rec["skipped"] = f">{args.max_seconds:g} s"
            records.append(rec)
            last[(mode, m.name)] = (T, math.inf)
            continue
        fn = m.setup(T, mode == "fwd+bwd")
        fn()  # warm-up (first-call allocations and dispatch caches are not timed)
        first = time_call(fn, 1, device, warmup=0)[0]
        if first > args.max_seconds:  # stop before a long run of repeats
            rec["skipped"] = f">{args.max_seconds:g} s"
            rec["first_call_s"] = first
            last[(mode, m.name)] = (T, math.inf)
        else:
            times = [first]
            # slow calls get fewer repeats: about 3 * max_seconds of timing per configuration at most
            while len(times) < args.repeats and sum(times) + times[-1] <= 3 * args.max_seconds:
                times += time_call(fn, 1, device, warmup=0)
            rec["times_s"] = times
            rec["median_s"] = statistics.median(times)
            last[(mode, m.name)] = (T, rec["median_s"])
        records.append(rec)
        del fn
    return records


def _fmt_time(rec: dict | None) -> str:
    if rec is None:
        return "-"
    if "skipped" in rec:
        return f"skipped ({rec['skipped']})"
    s = rec["median_s"]
    return f"{s * 1e3:.2f} ms" if s < 10 else f"{s:.1f} s"


def speedup_text(ours_s: float, peer_s: float) -> str:
    """``"2.10x faster"`` / ``"1.52x slower"`` / ``"same"``: how our time compares with the peer's."""
    ratio = peer_s / ours_s
    if abs(ratio - 1) < 0.005:
        return "same"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


def format_table(records: list[dict], ours: str, peers: list[str]) -> str:
    """A text table per mode: one row per T, a column per method (medians), then one column per peer saying how
    ours compares with it: ``"<ours> vs <peer>"`` holding ``"2.10x faster"`` or ``"1.52x slower"``."""
    by_key = {(r["mode"], r["T"], r["method"]): r for r in records}
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    header = ["mode", "T", ours, *peers, *(f"{ours} vs {p}" for p in peers)]
    rows = []
    for mode in modes:
        for T in sorted({r["T"] for r in records if r["mode"] == mode}):
            mine = by_key.get((mode, T, ours))
            row = [mode, str(T), _fmt_time(mine)]
            row += [_fmt_time(by_key.get((mode, T, p))) for p in peers]
            for p in peers:
                other = by_key.get((mode, T, p))
                ok = mine and other and "median_s" in mine and "median_s" in other
                row.append(speedup_text(mine["median_s"], other["median_s"]) if ok else "-")
            rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def print_table(records: list[dict], ours: str, peers: list[str]) -> None:
    print(format_table(records, ours, peers))


def plot_results(records: list[dict], path: str | Path, title: str) -> Path:
    """Time vs T, log-log, one panel per mode, one line per method (skipped lengths are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in records))
    for ax, mode in zip(axes[0], modes):
        for name in methods:
            pts = sorted(
                (r["T"], r["median_s"])
                for r in records
                if r["mode"] == mode and r["method"] == name and "median_s" in r
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("median time (ms)")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_json(records: list[dict], path: str | Path, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": records}, indent=2))
    return path


def machine_description(device: torch.device) -> str:
    import os
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {n} thread{'s' * (n > 1)} ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------------
# Section "gla": chunk_gla vs causal SDPA vs a token-by-token loop


def gla_loop(q, k, v, g, scale):
    """The naive peer: the GLA recurrence token by token in plain PyTorch (autograd through the loop)."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t]).unsqueeze(-1) * S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(outs, 1)


def _gla_inputs(args, device, T, backward):
    B, H, D = args.batch, args.heads, args.head_dim
    dtype = DTYPES[args.dtype]
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, D, device=device)) / 16  # the paper's gate: logsigmoid(.)/16, <= 0
    tensors = [q, k, v, g]
    for t in tensors:
        t.requires_grad_(backward)
    return tensors


def _timed(forward, tensors, backward):
    """Wrap ``forward()`` (which returns one output tensor) into the call to time."""
    if not backward:

        def call():
            with torch.no_grad():
                return forward()

        return call
    grad_out = None

    def call():
        nonlocal grad_out
        for t in tensors:
            t.grad = None
        out = forward()
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)

    return call


def _gla_methods(args, device):
    from hf_seqmodels.kernels import chunk_gla

    scale = args.head_dim**-0.5
    backend = None if args.backend == "auto" else args.backend

    def ours(T, backward):
        q, k, v, g = ts = _gla_inputs(args, device, T, backward)
        return _timed(lambda: chunk_gla(q, k, v, g, scale=scale, backend=backend)[0], ts, backward)

    def sdpa(T, backward):
        q, k, v, _ = _gla_inputs(args, device, T, False)
        q, k, v = (x.transpose(1, 2).contiguous().requires_grad_(backward) for x in (q, k, v))
        return _timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v], backward)

    def loop(T, backward):
        q, k, v, g = ts = _gla_inputs(args, device, T, backward)
        return _timed(lambda: gla_loop(q, k, v, g, scale), ts, backward)

    return [Method("gla", ours, 1), Method("sdpa", sdpa, 2), Method("loop", loop, 1)]


def _gla_describe(args):
    from hf_seqmodels.kernels import select_backend

    backend = select_backend("chunk_gla", torch.device(args.device), None if args.backend == "auto" else args.backend)
    return (
        f"gla: chunk_gla ({backend} backend) vs causal SDPA vs token loop, B{args.batch} H{args.heads} "
        f"D{args.head_dim} {args.dtype}"
    )


register_section(Section("gla", _gla_methods, _gla_describe))


# ----------------------------------------------------------------------------------------------------------------
# Sections "paragru" / "paralstm": the cell solved in parallel (Newton + scans) vs step by step vs torch.nn.GRU/LSTM


def _pararnn_methods(cell_name):
    def methods(args, device):
        from hf_seqmodels.layers.pararnn import CELLS

        D, dtype = args.hidden_size, DTYPES[args.dtype]
        cell = CELLS[cell_name](D, D).to(device=device, dtype=dtype)
        peer = (torch.nn.GRU if cell_name == "gru" else torch.nn.LSTM)(D, D, batch_first=True).to(device, dtype)

        def inputs(T, backward):
            return torch.randn(args.batch, T, D, device=device, dtype=dtype, requires_grad=backward)

        def run_cell(mode):
            def setup(T, backward):
                x = inputs(T, backward)
                return _timed(lambda: cell(x, mode=mode)[0], [x, *cell.parameters()], backward)

            return setup

        def torch_rnn(T, backward):
            x = inputs(T, backward)
            return _timed(lambda: peer(x)[0], [x, *peer.parameters()], backward)

        name = "para" + cell_name
        return [
            Method(f"{name}-auto", run_cell("auto"), 1),  # the default: what a user gets
            Method(f"{name}-parallel", run_cell("parallel"), 1),
            Method(f"{name}-sequential", run_cell("sequential"), 1),
            Method(f"torch.nn.{cell_name.upper()}", torch_rnn, 1),
        ]

    return methods


def _pararnn_describe(cell_name):
    def describe(args):
        from hf_seqmodels.kernels import select_backend

        backend = select_backend(
            "newton_solve", torch.device(args.device), None if args.backend == "auto" else args.backend
        )
        return (
            f"para{cell_name}: mode auto (the default) vs Newton-parallel ({backend} backend) vs sequential vs "
            f"torch.nn.{cell_name.upper()}, "
            f"B{args.batch} hidden {args.hidden_size} {args.dtype}"
        )

    return describe


for _cell in ("gru", "lstm"):
    register_section(Section(f"para{_cell}", _pararnn_methods(_cell), _pararnn_describe(_cell)))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="time our ops against the peers (SDPA, a token loop, ...) over sequence lengths",
        description="Time our ops beside the peers a user would pick instead (causal SDPA, a token-by-token loop, "
        "torch.nn.GRU/LSTM), over sequence lengths; print a table with how much faster or slower ours is "
        "than each peer, and write a JSON file and a PNG plot to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--section", default="gla", help=f"what to benchmark: one of {sorted(SECTIONS)}")
    p.add_argument("--device", type=device("--device"), default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--seq-lens",
        type=positive_list(int, "--seq-lens"),
        default=None,
        help="comma-separated lengths (default: the section's, 256..16384 doubling)",
    )
    p.add_argument("--batch", type=positive_int("--batch"), default=1, help="batch size")
    p.add_argument("--heads", type=positive_int("--heads"), default=4, help="heads (gla section)")
    p.add_argument(
        "--head-dim", type=positive_int("--head-dim"), default=64, help="key/value size per head (gla section)"
    )
    p.add_argument(
        "--hidden-size",
        type=positive_int("--hidden-size"),
        default=256,
        help="state and input size of the ParaRNN sections",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="inputs' and weights' dtype")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto", help="our kernels' backend")
    p.add_argument(
        "--repeats", type=positive_int("--repeats"), default=5, help="timed calls per configuration (at most)"
    )
    p.add_argument(
        "--max-seconds",
        type=positive_float("--max-seconds"),
        default=5.0,
        help="skip a method at lengths where one call takes (or is predicted to take) longer than this; "
        "calls near it get fewer repeats",
    )
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated subset of fwd,fwd+bwd")
    p.add_argument("--quick", action="store_true", help="short lengths, 2 repeats: a smoke run")
    p.add_argument(
        "--threads",
        type=positive_int("--threads"),
        default=None,
        help="torch CPU threads (default: torch's own choice)",
    )
    p.add_argument("--out", default="bench_out", help="folder for the JSON and PNG")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    if args.section not in SECTIONS:
        raise ValueError(f"--section must be one of {sorted(SECTIONS)}, got {args.section!r}")
    section = SECTIONS[args.section]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes must be a comma-separated subset of {MODES}, got {args.modes!r}")
    args.modes = modes
    if not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.seq_lens is None:
        args.seq_lens = list(section.quick_seq_lens if args.quick else section.default_seq_lens)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.backend != "auto":  # ops without a backend argument (the ParaRNN cells) read the environment
        import os

        os.environ["HF_SEQMODELS_BACKEND"] = args.backend
    check_output_folder("--out", args.out)  # before the timing, not at the final write
    require_packages("bench", {"matplotlib": "the benchmark's plot"})
    torch.manual_seed(0)
    title = section.describe(args)
    records = run_section(section, args, device, progress=not args.no_progress)
    methods = list(dict.fromkeys(r["method"] for r in records))
    machine = machine_description(device)
    print(
        f"\n{title}\n{machine}, torch {torch.__version__}, medians of {args.repeats}; "
        f'"{methods[0]} vs X": how much faster (or slower) {methods[0]} is than X\n'
    )
    print_table(records, methods[0], methods[1:])
    out = Path(args.out)
    meta = {
        "section": section.name,
        "title": title,
        "machine": machine,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "max_seconds": args.max_seconds,
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "hidden_size": args.hidden_size,
        "dtype": args.dtype,
        "device": str(device),
    }
    png = plot_results(records, out / f"bench_{section.name}.png", f"{title}\n{machine}")
    js = save_json(records, out / f"bench_{section.name}.json", meta)
    print(f"\nwrote {js} and {png}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-seqmodels")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv or [])])
    return args.func(args)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
