"""State tracking on the CPU: ParaGRU / ParaLSTM against GLA, a 2-layer Llama and dense torch.nn.GRU / LSTM.

Every model gets the same budget (steps x batch at the trained length, fresh batches from the same generator) and is
scored at the trained length and at longer ones (length generalization), accuracy of the final state (the papers'
metric); see ``hf_seqmodels/evaluation/state_tracking.py`` for the task generators.

    python -m benchmarks.state_tracking run --task parity --models paragru,gla --seeds 0 1 2 --out results/p.json
    python -m benchmarks.state_tracking report results/st_*.json --name state_tracking   # -> results/NAME.{md,png}

Runs are separate processes so that two can train side by side (``--threads 1`` each). ``report`` picks, per task
and model, the learning rate with the best mean accuracy at the trained length over seeds, and gives the mean and
the range over those seeds; the plot has one panel per task (mean learning curve, shaded min-max over seeds) and a
panel of Newton iterations per solve over training for the ParaRNN models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
#: per model name: the config it trains, its layers and config overrides
RECIPES = {
    "paragru": dict(config="paragru", layers=1),
    "paralstm": dict(config="paralstm", layers=1),
    # the LM init of the recurrent weights (ParaRNNConfig's default) instead of the state-tracking one
    "paragru-lminit": dict(config="paragru", layers=1, recurrent_init="xavier_clipped"),
    "paralstm-lminit": dict(config="paralstm", layers=1, recurrent_init="xavier_clipped"),
    # the paper's synthetic-task constraint: |a| <= 0.9 in every step
    "paragru-clip": dict(config="paragru", layers=1, recurrent_clip=0.9),
    "paralstm-clip": dict(config="paralstm", layers=1, recurrent_clip=0.9),
    "gla": dict(config="gla", layers=1),
    "plstm": dict(config="plstm", layers=1),  # P-mode: dense transitions
    "plstm-d": dict(config="plstm", layers=1, transition_mode="D"),  # D-mode: diagonal transitions
    "llama": dict(config="llama", layers=2),
    "dense-gru": dict(config="dense-gru", layers=1),
    "dense-lstm": dict(config="dense-lstm", layers=1),
}
NAMES = {
    "paragru": "ParaGRU",
    "paralstm": "ParaLSTM",
    "paragru-lminit": "ParaGRU, LM init (xavier_clipped)",
    "paralstm-lminit": "ParaLSTM, LM init (xavier_clipped)",
    "paragru-clip": "ParaGRU, recurrent_clip 0.9",
    "paralstm-clip": "ParaLSTM, recurrent_clip 0.9",
    "gla": "GLA",
    "plstm": "pLSTM (P-mode)",
    "plstm-d": "pLSTM (D-mode)",
    "llama": "Llama (2 layers)",
    "dense-gru": "torch.nn.GRU",
    "dense-lstm": "torch.nn.LSTM",
}
DEFAULT_MODELS = ("paragru", "paralstm", "gla", "llama", "dense-gru", "dense-lstm")


def run(args):
    from hf_seqmodels.evaluation.state_tracking import train_and_evaluate

    torch.set_num_threads(args.threads)
    results = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    done = {(r.get("model", r["config"]), r["lr"], r["seed"], r["steps"], r["train_length"]) for r in results}
    for model in args.models.split(","):
        if model not in RECIPES:
            raise SystemExit(f"--models: {model!r} is not one of {sorted(RECIPES)}")
        recipe = dict(RECIPES[model])
        for lr in args.lr:
            for seed in args.seeds:
                if (model, lr, seed, args.steps, args.length) in done:  # resume an interrupted sweep
                    continue
                start = time.time()
                r = train_and_evaluate(
                    args.task,
                    train_length=args.length,
                    test_lengths=args.test_lengths,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    lr=lr,
                    d_model=args.d_model,
                    seed=seed,
                    eval_every=args.eval_every or max(1, args.steps // 20),
                    num_test=args.num_test,
                    progress=not args.no_progress,
                    **recipe,
                )
                r["model"] = model
                r["time_s"] = round(time.time() - start, 1)
                r["machine"] = f"{platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}"
                r["date"] = time.strftime("%Y-%m-%d")
                results.append(r)
                print(
                    json.dumps(
                        {k: r[k] for k in ("task", "model", "lr", "seed", "accuracy", "newton", "time_s") if k in r}
                    ),
                    flush=True,
                )
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


def _acc(r, length):
    return r["accuracy"][str(length)]["last"]


def select(runs):
    """{(task, train_length, model): runs of its best learning rate (by mean accuracy at the trained length over
    seeds; ties: the smaller lr)}, and {(task, train_length, model): {lr: mean}} for the record."""
    groups = {}
    for r in runs:
        groups.setdefault((r["task"], r["train_length"], r.get("model", r["config"])), {}).setdefault(
            r["lr"], []
        ).append(r)
    best, by_lr = {}, {}
    for key, lrs in groups.items():
        means = {lr: sum(_acc(r, r["train_length"]) for r in rs) / len(rs) for lr, rs in lrs.items()}
        by_lr[key] = means
        best[key] = lrs[max(sorted(means), key=lambda lr: means[lr])]
    return best, by_lr


def _curve_arrays(rs):
    steps = [p["step"] if isinstance(p, dict) else p[0] for p in rs[0]["curve"]]
    accs = [
        [p["accuracy"] if isinstance(p, dict) else p[1] for p in r["curve"]]
        for r in rs
        if len(r["curve"]) == len(steps)
    ]
    return steps, accs


def report(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path in args.files:
        with open(path) as f:
            runs.extend(json.load(f))
    best, by_lr = select(runs)
    keys = sorted(best, key=lambda k: (k[0], k[1], list(RECIPES).index(k[2]) if k[2] in RECIPES else 99))
    panels = sorted({(t, L) for t, L, _ in keys})
    lines = [
        "| task | L (trained) | model | steps x batch | lr (swept: mean acc at 1x) | seeds | final-state acc, mean "
        "[min-max]: "
        "1x | 2x | 4x | Newton it/solve train mean (max) [at 4x] | fallbacks | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    newton_models = [k for k in keys if any(r.get("newton") for r in best[k])]
    ncols = len(panels) + (1 if newton_models else 0)
    grid = min(3, ncols)
    fig, axes = plt.subplots(-(-ncols // grid), grid, figsize=(4.6 * grid, 3.6 * -(-ncols // grid)), squeeze=False)
    axes = axes.ravel()
    for ax in axes[ncols:]:
        ax.axis("off")
    for ax, (task, length) in zip(axes, panels):
        for key in [k for k in keys if k[:2] == (task, length)]:
            rs = best[key]
            lengths = list(rs[0]["accuracy"])
            cells = []
            for k in lengths:
                vals = [_acc(r, k) for r in rs]
                spread = f" [{min(vals):.2f}-{max(vals):.2f}]" if len(vals) > 1 else ""
                cells.append(f"{sum(vals) / len(vals):.3f}{spread}")
            newton = [r["newton"] for r in rs if r.get("newton") and r["newton"]["solves"]]
            if newton:
                mean_it = sum(n["mean_iterations"] for n in newton) / len(newton)
                long_it = [r["accuracy"][lengths[-1]].get("newton") for r in rs]
                long_it = [n["mean_iterations"] for n in long_it if n]
                top = [n["max_iterations"] for n in newton if n.get("max_iterations")]  # older files: mean only
                nw = (
                    f"{mean_it:.2f}"
                    + (f" ({max(top)})" if top else "")
                    + (f" [{sum(long_it) / len(long_it):.2f}]" if long_it else "")
                )
                fb = str(sum(n["fallbacks"] for n in newton))
            else:
                nw = fb = "-"
            swept = ", ".join(f"{lr:g}: {by_lr[key][lr]:.2f}" for lr in sorted(by_lr[key]))
            r0 = rs[0]
            lines.append(
                f"| {task} | {length} | {NAMES.get(key[2], key[2])} | {r0['steps']} x {r0['batch_size']} | "
                f"{r0['lr']:g} ({swept}) | {len(rs)} | "
                + " | ".join(cells)
                + f" | {nw} | {fb} | {sum(r['time_s'] for r in rs) / len(rs):.0f} |"
            )
            steps, accs = _curve_arrays(rs)
            if not accs:
                continue
            mean = [sum(c) / len(c) for c in zip(*accs)]
            color = f"C{list(RECIPES).index(key[2]) % 10}" if key[2] in RECIPES else None  # one colour per model
            (line,) = ax.plot(steps, mean, color=color, label=f"{NAMES.get(key[2], key[2])} (lr {r0['lr']:g})")
            if len(accs) > 1:
                ax.fill_between(
                    steps,
                    [min(c) for c in zip(*accs)],
                    [max(c) for c in zip(*accs)],
                    color=line.get_color(),
                    alpha=0.15,
                )
        ax.set_title(f"{task}, L={length}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("final-state accuracy (held out)")
    if newton_models:
        ax = axes[ncols - 1]
        for key in newton_models:
            for r in best[key][:1]:
                pts = [p for p in r["curve"] if isinstance(p, dict) and p.get("newton")]
                ax.plot(
                    [p["step"] for p in pts],
                    [p["newton"]["mean_iterations"] for p in pts],
                    label=f"{NAMES.get(key[2], key[2])} {key[0]} L{key[1]}",
                )
        ax.set_title("Newton iterations per solve (training)")
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(args.out_dir, exist_ok=True)
    fig.savefig(os.path.join(args.out_dir, f"{args.name}.png"), dpi=110)
    with open(os.path.join(args.out_dir, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and score models on one task")
    r.add_argument("--task", required=True, choices=["parity", "cycle", "modular", "a5"])
    r.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {list(RECIPES)}")
    r.add_argument("--length", type=int, default=32, help="trained length")
    r.add_argument("--test-lengths", type=int, nargs="+", default=None, help="default: 1x, 2x, 4x the trained length")
    r.add_argument("--steps", type=int, default=1000)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--d-model", type=int, default=64)
    r.add_argument("--lr", type=float, nargs="+", default=[3e-3])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--num-test", type=int, default=512)
    r.add_argument("--eval-every", type=int, default=0, help="learning-curve points (default: steps // 20)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--out", required=True)
    r.set_defaults(func=run)
    rep = sub.add_parser("report", help="merge run files into a table and a plot")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--name", default="state_tracking", help="OUT_DIR/NAME.md and OUT_DIR/NAME.png")
    rep.add_argument("--out-dir", default=RESULTS, help="default: benchmarks/results")
    rep.set_defaults(func=report)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
