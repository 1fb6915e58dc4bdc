"""State tracking on the CPU: ParaGRU / ParaLSTM against GLA, a 2-layer Llama and dense torch.nn.GRU / LSTM.

Every model gets the same budget (steps x batch at the trained length, fresh batches from the same generator) and is
scored at the trained length and at 2x and 4x (length generalization), accuracy of the final state (the papers'
metric); see ``hf_seqmodels/evaluation/state_tracking.py`` for the task generators.

    python benchmarks/state_tracking.py run --task parity --models paragru,gla --out results/st_parity.json
    python benchmarks/state_tracking.py report results/st_*.json     # -> results/state_tracking.{md,png}

Runs are separate processes so that two can train side by side (``--threads 1`` each).
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
#: per model: layers and config overrides of the recorded runs
RECIPES = {
    "paragru": dict(layers=1),
    "paralstm": dict(layers=1),
    "gla": dict(layers=1),
    "llama": dict(layers=2),
    "dense-gru": dict(layers=1),
    "dense-lstm": dict(layers=1),
}


def run(args):
    from hf_seqmodels.evaluation.state_tracking import train_and_evaluate

    torch.set_num_threads(args.threads)
    results = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    for model in args.models.split(","):
        for lr in args.lr:
            for seed in args.seeds:
                start = time.time()
                r = train_and_evaluate(args.task, model, train_length=args.length, steps=args.steps,
                                       batch_size=args.batch_size, lr=lr, d_model=args.d_model, seed=seed,
                                       eval_every=max(1, args.steps // 20), num_test=args.num_test,
                                       **RECIPES.get(model, {}))
                r["time_s"] = round(time.time() - start, 1)
                r["machine"] = f"{platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}"
                r["date"] = time.strftime("%Y-%m-%d")
                results.append(r)
                print(json.dumps({k: r[k] for k in ("task", "config", "lr", "seed", "accuracy", "newton", "time_s")
                                  if k in r}), flush=True)
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


def report(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path in args.files:
        with open(path) as f:
            runs.extend(json.load(f))
    # the best learning rate per (task, model, seed) by accuracy at the trained length, then the mean over seeds
    best = {}
    for r in runs:
        key = (r["task"], r["config"], r["seed"])
        score = r["accuracy"][str(r["train_length"])]["last"]
        if key not in best or score > best[key][0]:
            best[key] = (score, r)
    table = {}
    for (task, model, _), (_, r) in best.items():
        table.setdefault((task, model), []).append(r)
    tasks = sorted({t for t, _ in table})
    models = [m for m in RECIPES if any((t, m) in table for t in tasks)]
    lines = ["| task | model | lr | " + " | ".join(f"acc@{k}" for k in ("1x", "2x", "4x")) + " | Newton it/solve "
             "(fallbacks) | s/run |", "|---|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for model in models:
            rs = table.get((task, model))
            if not rs:
                continue
            lengths = list(rs[0]["accuracy"])
            acc = [sum(r["accuracy"][k]["last"] for r in rs) / len(rs) for k in lengths]
            newton = [r["newton"] for r in rs if r.get("newton") and r["newton"]["solves"]]
            nw = (f"{sum(n['mean_iterations'] for n in newton) / len(newton):.1f} "
                  f"({sum(n['fallbacks'] for n in newton)})" if newton else "-")
            lrs = ",".join(sorted({f"{r['lr']:g}" for r in rs}))
            lines.append(f"| {task} | {model} | {lrs} | " + " | ".join(f"{a:.3f}" for a in acc)
                         + f" | {nw} | {sum(r['time_s'] for r in rs) / len(rs):.0f} |")
            curve = rs[0]["curve"]
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=model)
        length = next(r["train_length"] for (t, _), rs in table.items() if t == task for r in rs)
        ax.set_title(f"{task} (L={length})")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("final-state accuracy (held out)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(RESULTS, exist_ok=True)
    fig.savefig(os.path.join(RESULTS, "state_tracking.png"), dpi=110)
    with open(os.path.join(RESULTS, "state_tracking.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and score models on one task")
    r.add_argument("--task", required=True, choices=["parity", "cycle", "modular", "a5"])
    r.add_argument("--models", default=",".join(RECIPES))
    r.add_argument("--length", type=int, default=32, help="trained length")
    r.add_argument("--steps", type=int, default=1000)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--d-model", type=int, default=64)
    r.add_argument("--lr", type=float, nargs="+", default=[3e-3])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--num-test", type=int, default=512)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", required=True)
    r.set_defaults(func=run)
    rep = sub.add_parser("report", help="merge run files into a table and a plot")
    rep.add_argument("files", nargs="+")
    rep.set_defaults(func=report)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
