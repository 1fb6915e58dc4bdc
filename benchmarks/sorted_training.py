"""Sorted (SortedNet) training against plain training, same budget: held-out perplexity of every sub-model (the first
n layers with the shared final norm and head) of a small byte-level GLA.

Both runs start from the same initial weights and see the same windows in the same order (the first 90% of a text
file); the sorted run trains one sub-model per step, its depth drawn uniformly from 1..L
(``hf_seqmodels.SortedDepthCallback``). Perplexity per byte on the last 10% (``hf_seqmodels.depth_perplexities``).

    python -m benchmarks.sorted_training [--data ../shared/data/wikitext2-valid.txt] [--steps 300] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from benchmarks.lib.byte_lm import DEFAULT_TEXT, load_splits, train, windows
from hf_seqmodels import GLAConfig, GLAForCausalLM, SortedDepthCallback, depth_perplexities


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_TEXT)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sorted_training.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_bytes, eval_bytes = load_splits(args.data)
    train_ids = windows(train_bytes, args.context, args.steps * args.batch)
    eval_ids = windows(eval_bytes, args.context, args.eval_windows)
    config = GLAConfig(
        vocab_size=256, hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=4, pad_token_id=None
    )
    torch.manual_seed(0)
    start = GLAForCausalLM(config).state_dict()
    results = dict(args=vars(args), machine=platform.machine(), torch=torch.__version__, runs={})
    for name in ("plain", "sorted"):
        model = GLAForCausalLM(config)
        model.load_state_dict(start)
        callbacks = [SortedDepthCallback()] if name == "sorted" else []
        t0 = time.time()
        train(model, train_ids, args.batch, args.lr, callbacks=callbacks)
        seconds = time.time() - t0
        ppl = depth_perplexities(model, eval_ids, batch_size=16)
        results["runs"][name] = dict(perplexity=ppl, seconds=seconds)
        if callbacks:
            results["runs"][name]["depth_counts"] = {
                d: callbacks[0].depths_trained.count(d) for d in range(1, args.layers + 1)
            }
    print(f"{'depth':>5} {'plain ppl':>10} {'sorted ppl':>10}")
    for d in range(1, args.layers + 1):
        plain, sorted_ = (results["runs"][n]["perplexity"][d] for n in ("plain", "sorted"))
        print(f"{d:5d} {plain:10.3f} {sorted_:10.3f}")
    print({n: round(r["seconds"]) for n, r in results["runs"].items()}, results["runs"]["sorted"]["depth_counts"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
