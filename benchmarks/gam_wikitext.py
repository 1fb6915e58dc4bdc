"""GAM against GLA and a Llama on WikiText-2 words, at a matched CPU budget: held-out perplexity.

Data: ``wikitext2-valid.txt`` (already word-tokenized, with ``<unk>``), split on whitespace, ``<eos>`` at the end of
every non-empty line; the first 90% of the tokens train, the last 10% are held out. Words seen fewer than
``--min-count`` times in the training part become ``<unk>``. The same vocabulary, windows and batch order for every
model.

Models (the factories of ``eval mqar``, ``hf_seqmodels.evaluation.mqar.make_mqar_config``; tied embeddings):
``llama`` (transformers' LlamaForCausalLM, SwiGLU MLP), ``gla`` (GLA with short convolutions, SwiGLU MLP) and ``gam``
(GAMConfig: 512 memory slots, kernel 3, 4x GELU FFN), all at the same width and depth, so their parameter counts
agree within 10% (checked). Each trains ``--steps`` AdamW steps of ``--batch-size`` windows of ``--context`` tokens
(linear warm-up over 10% of the steps, then cosine decay to 10%) at each learning rate of ``--lrs``; the table gives
each model's held-out perplexity at its better learning rate, the ratio to the Llama's, and a unigram model's
perplexity (training-split counts) for scale.

    python -m benchmarks.gam_wikitext                 # defaults: ../shared/data/wikitext2-valid.txt
    python -m benchmarks.gam_wikitext --models gam --threads 1   # one model (its own process, side by side)

The defaults (d 64, 2 layers, context 64, batch 16, 100 steps, lrs 3e-3 and 1e-2) take ~10 minutes for the three
models on a loaded 2-core CPU. Recorded runs (BENCHMARKS.md): the defaults and ``--steps 300``, one process per
model (``--models NAME --threads 1``; the same data, init and batch order as one process).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import Counter

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels.evaluation.mqar import make_mqar_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "wikitext2-valid.txt")
MODELS = ("llama", "gla", "gam")


def load_words(path: str, min_count: int, split: float = 0.9):
    """(train ids, held-out ids, vocabulary) from a word-tokenized text file."""
    words = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                words.extend(line.split())
                words.append("<eos>")
    cut = int(len(words) * split)
    counts = Counter(words[:cut])
    vocab = ["<unk>"] + sorted(w for w, c in counts.items() if c >= min_count and w != "<unk>")
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index.get(w, 0) for w in words], dtype=torch.long)
    return ids[:cut], ids[cut:], vocab


def unigram_perplexity(train: torch.Tensor, held_out: torch.Tensor, vocab_size: int) -> float:
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0  # add-one: no zero probability
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[held_out].mean().item())


def windows(ids: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` tokens (inputs and their next tokens)."""
    n = (len(ids) - 1) // context
    return torch.stack([ids[i * context : i * context + context + 1] for i in range(n)])


def build(name: str, vocab_size: int, d_model: int, layers: int, heads: int, seed: int):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(make_mqar_config(name, d_model, layers, vocab_size, heads))


def n_params(model, embeddings: bool = True) -> int:
    total = sum(p.numel() for p in model.parameters())
    return total if embeddings else total - model.get_input_embeddings().weight.numel()


@torch.no_grad()
def perplexity(model, data: torch.Tensor, batch_size: int) -> float:
    model.eval()
    nats, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        logits = model(batch[:, :-1], use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        nats, count = nats + loss.item(), count + batch[:, 1:].numel()
    return math.exp(nats / count)


def train(model, data: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, desc: str) -> float:
    """AdamW (weight decay 0.1 on matrices), warm-up then cosine; the same batch order for every model (``seed``).
    Returns the mean training loss of the last 10% of the steps."""
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    warmup = max(1, steps // 10)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    tail = []
    for step in tqdm(range(steps), desc=desc, leave=False):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(batch[:, :-1], labels=batch[:, :-1].clone(), use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    return sum(tail) / len(tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lrs", type=float, nargs=2, default=[3e-3, 1e-2])
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    train_ids, test_ids, vocab = load_words(args.data, args.min_count)
    train_w, test_w = windows(train_ids, args.context), windows(test_ids, args.context)
    print(
        f"WikiText-2 words ({os.path.basename(args.data)}): vocab {len(vocab)} (min count {args.min_count}), "
        f"{len(train_ids)} training / {len(test_ids)} held-out tokens; context {args.context}, batch "
        f"{args.batch_size}, {args.steps} steps = {args.steps * args.batch_size * args.context / len(train_ids):.2f} "
        f"epochs; lrs {args.lrs}"
    )
    sizes = {m: build(m, len(vocab), args.d_model, args.layers, args.heads, args.seed) for m in args.models}
    counts = {m: (n_params(model), n_params(model, False)) for m, model in sizes.items()}
    base = counts.get("llama", next(iter(counts.values())))[0]
    for m, (total, _) in counts.items():
        if abs(total / base - 1) > 0.10:
            raise SystemExit(f"{m}: {total} parameters, not within 10% of {base}: change --d-model/--layers")

    rows = {}
    for m in args.models:
        results = []
        for lr in args.lrs:
            model = build(m, len(vocab), args.d_model, args.layers, args.heads, args.seed)
            start = time.perf_counter()
            train_loss = train(model, train_w, args.steps, args.batch_size, lr, args.seed, f"{m} lr {lr:g}")
            seconds = time.perf_counter() - start
            ppl = perplexity(model, test_w, 32)
            results.append((ppl, lr, math.exp(train_loss), seconds))
            print(
                f"  {m:6s} lr {lr:g}: held-out ppl {ppl:8.1f}  train ppl (last 10%) {math.exp(train_loss):8.1f}",
                flush=True,
            )
        rows[m] = results

    unigram = unigram_perplexity(train_ids, test_ids, len(vocab))
    ref = min(rows["llama"])[0] if "llama" in rows else None
    print()
    print("| model | params (non-embedding) | ppl @ lr 1 | ppl @ lr 2 | best ppl | / llama | train s (loaded) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, results in rows.items():
        best = min(results)
        total, body = counts[m]
        ratio = f"{best[0] / ref:.2f}" if ref else "-"
        cells = " | ".join(f"{r[0]:.1f}" for r in results)
        secs = "/".join(f"{r[3]:.0f}" for r in results)
        print(f"| {m} | {total / 1e6:.2f}M ({body / 1e6:.2f}M) | {cells} | {best[0]:.1f} | {ratio} | {secs} |")
    print(f"| unigram (train counts) | - | - | - | {unigram:.1f} | {unigram / ref:.2f} | - |" if ref else "")
    print(f"(lr 1 = {args.lrs[0]:g}, lr 2 = {args.lrs[1]:g})")


if __name__ == "__main__":
    main()
