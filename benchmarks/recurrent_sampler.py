"""Tokens/s of the parallel diffusion-forcing sampler (``generate(recurrent_sampler="diffusion")``, arXiv 2510.14961)
against ordinary recurrent decoding (``generate(num_steps=...)``, one token at a time, ``num_steps`` core steps each),
batch 1 and 8, on a small recurrent-depth model on the CPU, with the agreement of the two outputs (the fraction of
generated positions where both chose the same token, greedy).

The model is a small byte-level one (vocab 256), trained for ``--train-steps`` AdamW steps on the first 90% of a text
file (``--train-steps 0``: random weights, the reference's init); prompts are windows of the last 10%. Each token's
latent starts from a random draw, so two ordinary runs with different seeds disagree too: that agreement is printed
as the floor to read the sampler's against. The sampler runs twice: "latent-diff" (the paper's default: a position
freezes when its latent changes by less than ``--exit-threshold`` in a step), "fixed" (every position freezes after
``num_steps`` core iterations, so it does the same core work per token as ordinary decoding), and "latent-diff" with
two new positions per step (``headway=2``). Every sampler run: ``inner_recurrence`` 4, ``max_wavefront`` 32, the
reference's noise mixing (0.5, damped) and embedding EMA (0.1).

    python -m benchmarks.recurrent_sampler [--train-steps 300] [--threads 2] [--new-tokens 48] [--out results/...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from tqdm import tqdm

from benchmarks.lib.byte_lm import DEFAULT_TEXT, load_splits, train, windows
from hf_seqmodels import RecurrentDepthConfig, RecurrentDepthForCausalLM


def build(args) -> RecurrentDepthForCausalLM:
    torch.manual_seed(0)
    config = RecurrentDepthConfig(
        vocab_size=256,
        n_embd=args.hidden,
        n_heads=4,
        intermediate_size=2 * args.hidden,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=2,
        n_layers_in_coda=1,
        mean_recurrence=args.num_steps,
        mean_backprop_depth=4,
    )
    return RecurrentDepthForCausalLM(config).eval()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def agreement(a: torch.Tensor, b: torch.Tensor, prompt: int) -> float:
    n = min(a.shape[1], b.shape[1]) - prompt
    return float((a[:, prompt : prompt + n] == b[:, prompt : prompt + n]).float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_TEXT)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--num-steps", type=int, default=16, help="core steps per token of ordinary decoding")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--inner-recurrence", type=int, default=4)
    ap.add_argument("--exit-threshold", type=float, default=0.03)
    ap.add_argument("--max-wavefront", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/recurrent_sampler.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args)
    train_bytes, held_out = load_splits(args.data)
    losses = []
    if args.train_steps > 0:
        losses = train(model, windows(train_bytes, args.context, args.train_steps * 16), batch=16, lr=3e-3)
    batches = [int(b) for b in args.batches.split(",")]
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, num_steps=args.num_steps, pad_token_id=0)
    samplers = {
        "latent-diff": dict(freeze_strategy="latent-diff", exit_threshold=args.exit_threshold),
        "fixed": dict(freeze_strategy="fixed"),
        "latent-diff, headway 2": dict(freeze_strategy="latent-diff", exit_threshold=args.exit_threshold, headway=2),
    }
    runs = []
    bar = tqdm(total=len(batches) * (2 + len(samplers)), desc="recurrent sampler")
    for batch in batches:
        prompts = windows(held_out, args.prompt, batch, offset=batch * 1000)
        mask = torch.ones_like(prompts)

        def ordinary(seed):
            return model.generate(prompts, attention_mask=mask, generator=torch.Generator().manual_seed(seed), **common)

        model.generate(prompts, attention_mask=mask, **{**common, "max_new_tokens": 2})  # warm-up
        base, base_s = timed(lambda: ordinary(1))
        bar.update()
        other, _ = timed(lambda: ordinary(2))
        bar.update()
        row = dict(
            batch=batch,
            ordinary_tokens_per_s=batch * args.new_tokens / base_s,
            ordinary_seconds=base_s,
            ordinary_vs_ordinary_other_seed_agreement=agreement(base, other, args.prompt),
        )
        for name, options in samplers.items():
            out, seconds = timed(
                lambda options=options: model.generate(
                    prompts,
                    attention_mask=mask,
                    recurrent_sampler="diffusion",
                    inner_recurrence=args.inner_recurrence,
                    max_wavefront=args.max_wavefront,
                    generator=torch.Generator().manual_seed(1),
                    return_dict_in_generate=True,
                    **options,
                    **common,
                )
            )
            stats = out.statistics
            generated = stats["recurrence_per_position"][:, args.prompt : args.prompt + args.new_tokens - 1]
            row[name] = dict(
                tokens_per_s=batch * args.new_tokens / seconds,
                seconds=seconds,
                speedup=base_s / seconds,
                agreement_with_ordinary=agreement(out.sequences, base, args.prompt),
                sampler_steps=stats["diffusion_steps"],
                mean_core_steps_per_token=float(generated.float().mean()),
                max_in_flight=int(stats["max_in_flight"].max()),
            )
            bar.update()
        runs.append(row)
    bar.close()
    print(
        f"model: n_embd {args.hidden}, 1 prelude + 2 core + 1 coda blocks, byte vocab, "
        + (f"trained {args.train_steps} steps (last loss {losses[-1]:.3f})" if losses else "random weights")
        + f"; ordinary decoding {args.num_steps} core steps per token; {args.new_tokens} new tokens, "
        f"prompt {args.prompt}; {args.threads} thread(s)"
    )
    print(
        "| batch | ordinary tok/s | sampler | tok/s | speedup | agreement with ordinary | core steps/token | steps |"
        " (ordinary vs ordinary, other seed) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in runs:
        for name in samplers:
            r = row[name]
            print(
                f"| {row['batch']} | {row['ordinary_tokens_per_s']:.1f} | {name} | {r['tokens_per_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['agreement_with_ordinary']:.2f} | {r['mean_core_steps_per_token']:.1f} | "
                f"{r['sampler_steps']} | {row['ordinary_vs_ordinary_other_seed_agreement']:.2f} |"
            )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            meta = dict(vars(args), machine=platform.machine(), torch=torch.__version__, train_losses=losses[-5:])
            json.dump(dict(meta=meta, runs=runs), f, indent=2)


if __name__ == "__main__":
    main()
