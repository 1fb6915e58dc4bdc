"""``hf-seqmodels linearize``: convert a Llama, recover it with (attention transfer and) LoRA, save it.

    hf-seqmodels linearize --model PATH [--gguf-file F] --method liger --out DIR --train-text FILE --steps N
"""
from __future__ import annotations

import argparse
import os
import time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "linearize",
        help="convert a Llama into a linear-time model (Liger, Lizard) and fine-tune it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="Llama checkpoint: a safetensors folder or Hub id, or the folder of --gguf-file")
    p.add_argument("--gguf-file", default=None, help="GGUF file (in --model's folder, or an absolute path)")
    p.add_argument("--method", default="liger", choices=["liger", "lizard"])
    p.add_argument("--out", required=True, help="output folder (model, tokenizer, model card)")
    p.add_argument("--train-text", required=True, help="UTF-8 text file to fine-tune on")
    p.add_argument("--eval-text", default=None, help="held-out text: perplexities of the base and result go into the model card")
    p.add_argument("--eval-tokens", type=int, default=4096, help="tokens of --eval-text to score")
    p.add_argument("--steps", type=int, required=True, help="LoRA fine-tuning steps (0: convert only)")
    p.add_argument("--transfer-steps", type=int, default=None, help="Lizard attention-transfer steps (default: --steps)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (Liger's paper: 1e-3)")
    p.add_argument("--transfer-lr", type=float, default=1e-2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=None, help="default: 2 * r")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj", help="comma-separated module names")
    p.add_argument("--window", type=int, default=None, help="sliding window: keys a query sees, itself included (Liger 64, Lizard 128)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from . import add_lora, attention_transfer, finetune, linearize, load_llama, perplexity_of_blocks, token_blocks
    from .convert import check_method

    options = {} if args.window is None else {"window_size": args.window}
    check_method(args.method, options)  # before anything is loaded
    for name in ("train_text", "eval_text"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"hf-seqmodels linearize: --{name.replace('_', '-')} {path!r} is not a file")
    if args.steps < 0 or args.seq_len < 2 or args.batch_size < 1:
        raise SystemExit("hf-seqmodels linearize: --steps must be >= 0, --seq-len >= 2, --batch-size >= 1")
    t0 = time.time()
    llama = load_llama(args.model, gguf_file=args.gguf_file, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    base = f"{args.model}/{args.gguf_file}" if args.gguf_file else args.model
    train = token_blocks(tokenizer, open(args.train_text, encoding="utf-8").read(), args.seq_len)
    held_out, card = None, {}
    if args.eval_text:
        ctx = min(args.seq_len, args.eval_tokens)
        held_out = token_blocks(tokenizer, open(args.eval_text, encoding="utf-8").read(), ctx, max_tokens=args.eval_tokens)
        card["perplexity of the base model"] = f"{perplexity_of_blocks(llama, held_out):.2f}"
    model = linearize(llama, args.method, base_model=base, **options)
    del llama
    if held_out is not None:
        card["perplexity right after conversion"] = f"{perplexity_of_blocks(model, held_out):.2f}"
    if args.method == "lizard":
        steps = args.steps if args.transfer_steps is None else args.transfer_steps
        attention_transfer(model, train, steps, lr=args.transfer_lr, batch_size=args.batch_size)
        card["attention transfer"] = f"{steps * args.batch_size * args.seq_len} tokens, lr {args.transfer_lr}"
        if held_out is not None:
            card["perplexity after attention transfer"] = f"{perplexity_of_blocks(model, held_out):.2f}"
    if args.steps > 0:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        model = add_lora(model, r=args.lora_r, alpha=args.lora_alpha, target_modules=targets)
        finetune(model, train, args.steps, lr=args.lr, batch_size=args.batch_size)
        card["LoRA fine-tune"] = f"r={args.lora_r} on {','.join(targets)}, {args.steps * args.batch_size * args.seq_len} tokens, lr {args.lr}"
        model = model.merge_and_unload()  # plain weights: the result loads with AutoModelForCausalLM alone
        if held_out is not None:
            card["perplexity after fine-tuning"] = f"{perplexity_of_blocks(model, held_out):.2f}"
    if held_out is not None:
        card["held-out text"] = f"{held_out.numel()} tokens of {os.path.basename(args.eval_text)}, context {held_out.shape[1]}"
    model.config.card_data.update(card)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.method} model to {args.out} in {time.time() - t0:.0f} s")
    for key, value in card.items():
        print(f"  {key}: {value}")
    return 0
