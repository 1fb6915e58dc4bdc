"""Magnitude pruning of recurrent language models: held-out perplexity against sparsity, before and after a short
recovery fine-tune (``hf_seqmodels.prune_projections``, global L1 unstructured over every projection of the decoder
layers, then ``Trainer`` with the masks applied).

A small ParaGRU and a small GLA (byte level, vocab 256) are trained on the first 90% of a text file; each is pruned
to each sparsity from the same trained weights, evaluated on the last 10% (bytes per-token perplexity), fine-tuned
for ``--recovery-steps`` steps on text it has not trained on, and evaluated again.

    python -m benchmarks.pruning [--data ../shared/data/wikitext2-valid.txt] [--threads 2] [--out results/pruning.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch

from benchmarks.lib.byte_lm import DEFAULT_TEXT, load_splits, train, windows
from hf_seqmodels import (
    GLAConfig,
    GLAForCausalLM,
    ParaRNNConfig,
    ParaRNNForCausalLM,
    depth_perplexities,
    prune_projections,
)

SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.9)


def build(arch: str, hidden: int, layers: int):
    common = dict(vocab_size=256, hidden_size=hidden, num_hidden_layers=layers, pad_token_id=None)
    if arch == "gla":
        return GLAForCausalLM(GLAConfig(num_heads=4, **common))
    return ParaRNNForCausalLM(ParaRNNConfig(cell="gru", num_heads=4, **common))


def perplexity(model, ids) -> float:
    return depth_perplexities(model, ids, depths=[model.config.num_hidden_layers], batch_size=16)[
        model.config.num_hidden_layers
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_TEXT)
    ap.add_argument("--archs", default="paragru,gla")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=250, help="training steps of the dense model")
    ap.add_argument("--recovery-steps", type=int, default=25)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--recovery-lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "pruning.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_bytes, eval_bytes = load_splits(args.data)
    train_ids = windows(train_bytes, args.context, args.steps * args.batch)
    recovery_ids = windows(train_bytes, args.context, args.recovery_steps * args.batch, offset=train_ids.numel())
    eval_ids = windows(eval_bytes, args.context, args.eval_windows)
    results = dict(args=vars(args), machine=platform.machine(), torch=torch.__version__, threads=args.threads, runs={})
    print(f"{'model':8} {'sparsity':>8} {'achieved':>8} {'ppl pruned':>10} {'ppl recovered':>13}")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        dense = build(arch, args.hidden, args.layers)
        start = time.time()
        train(dense, train_ids, args.batch, args.lr)
        rows = []
        for sparsity in SPARSITIES:
            model = copy.deepcopy(dense)
            report = prune_projections(model, sparsity)
            counts = {n: m.weight.numel() for n, m in model.named_modules() if n in report}
            achieved = sum(report[n] * counts[n] for n in report) / sum(counts.values())
            before = perplexity(model, eval_ids)
            train(model, recovery_ids, args.batch, args.recovery_lr)
            after = perplexity(model, eval_ids)
            rows.append(dict(sparsity=sparsity, achieved=achieved, ppl_pruned=before, ppl_recovered=after))
            print(f"{arch:8} {sparsity:8.0%} {achieved:8.1%} {before:10.3f} {after:13.3f}", flush=True)
        results["runs"][arch] = dict(
            rows=rows, seconds=time.time() - start, params=sum(p.numel() for p in dense.parameters())
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
