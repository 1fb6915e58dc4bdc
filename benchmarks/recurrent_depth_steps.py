"""Does depth buy anything? A small recurrent-depth model against a fixed-depth Llama of about the same parameters on a
state-tracking task, and the recurrent model scored at test-time core steps below and beyond its trained mean.

    python -m benchmarks.recurrent_depth_steps --task modular --train-length 16 --steps 600
    # -> benchmarks/results/recurrent_depth_steps.{json,png}

The recurrent-depth model (``eval state-tracking``'s "recurrent_depth" row): a 1-block prelude, a ``--core-layers``
core applied 4 times on average in training (Huginn's Poisson-lognormal depth, gradients through the last 2 steps),
a 1-block coda. The Llama has ``core-layers + 2`` layers (the same blocks, applied once each; the recurrent model has
an extra ``[2d, d]`` adapter). Both train with ``train_and_evaluate``'s recipe (same data, batches and budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def parameters(config: str, layers: int, d_model: int, task: str) -> int:
    from hf_seqmodels.evaluation.state_tracking import get_task, make_model

    return sum(p.numel() for p in make_model(config, get_task(task), d_model, layers).parameters())


def main(argv=None):
    from hf_seqmodels.evaluation.state_tracking import train_and_evaluate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="modular")
    p.add_argument("--train-length", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--core-layers", type=int, default=2)
    p.add_argument("--test-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "recurrent_depth_steps"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    common = dict(
        train_length=args.train_length,
        test_lengths=(args.train_length, 2 * args.train_length),
        steps=args.steps,
        lr=args.lr,
        d_model=args.d_model,
        seed=args.seed,
    )
    runs = {}
    for name, config, layers, extra in (
        ("recurrent_depth", "recurrent_depth", args.core_layers, {"recurrence_steps": tuple(args.test_steps)}),
        ("llama", "llama", args.core_layers + 2, {}),
    ):
        start = time.perf_counter()
        result = train_and_evaluate(args.task, config, layers=layers, **common, **extra)
        result["seconds"] = time.perf_counter() - start
        result["parameters"] = parameters(config, layers, args.d_model, args.task)
        runs[name] = result
        print(f"{name}: {result['parameters']:,} parameters, final loss {result['final_loss']:.3f}")
        for length, acc in result["accuracy"].items():
            line = f"  L{length}: final-state accuracy {acc['last']:.3f}"
            if "by_steps" in acc:
                line += "; by test-time core steps " + ", ".join(f"{s}: {a:.3f}" for s, a in acc["by_steps"].items())
            print(line)
    record = {
        "args": vars(args),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    plot(record, args.out + ".png")
    print(f"wrote {args.out}.json and .png")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args, runs = record["args"], record["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for length, acc in runs["recurrent_depth"]["accuracy"].items():
        steps = [int(s) for s in acc["by_steps"]]
        ax.plot(steps, list(acc["by_steps"].values()), marker="o", label=f"recurrent depth, L{length}")
    for i, (length, acc) in enumerate(runs["llama"]["accuracy"].items()):
        ax.axhline(acc["last"], ls="--", color=f"C{i}", label=f"Llama ({args['core_layers'] + 2} layers), L{length}")
    ax.axvline(4, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test-time core steps (trained mean: 4)")
    ax.set_ylabel("final-state accuracy")
    ax.set_title(f"{args['task']}, trained at length {args['train_length']}, {args['steps']} steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
