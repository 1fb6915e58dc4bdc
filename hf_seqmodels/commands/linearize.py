"""``hf-seqmodels linearize``: convert a Llama-shaped decoder (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3,
Phi-3), recover it with (attention transfer and) LoRA, save it.

    hf-seqmodels linearize --model PATH [--gguf-file F] --method liger --out DIR --train-text FILE --steps N
                           [--softmax-every K | --softmax-layers I,J,...]

Every flag, the output folder, the model folder (and GGUF file) and the texts are checked before the model is
loaded; each stage (perplexities, attention transfer, LoRA) shows a progress bar.
"""

from __future__ import annotations

import argparse
import os
import time

from .args import (
    HelpFormatter,
    add_decoder_arguments,
    bounded_int,
    check_model_folder,
    check_output_folder,
    device,
    existing_file,
    non_negative_int,
    positive_float,
    positive_int,
    read_text,
    require_packages,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "linearize",
        help="convert a Llama-shaped decoder into a linear-time model (Liger, Lizard) and fine-tune it",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_decoder_arguments(p)
    p.add_argument("--method", default="liger", choices=["liger", "lizard"], help="linearization method")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (model, tokenizer, model card); never one of the inputs, and a new one unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder (only once the new model is complete)",
    )
    p.add_argument(
        "--train-text", required=True, type=existing_file("--train-text"), help="UTF-8 text file to fine-tune on"
    )
    p.add_argument(
        "--eval-text",
        default=None,
        type=existing_file("--eval-text"),
        help="held-out text: perplexities of the base and result go into the model card",
    )
    p.add_argument(
        "--eval-tokens", type=bounded_int("--eval-tokens", 2), default=4096, help="tokens of --eval-text to score"
    )
    p.add_argument(
        "--steps", type=non_negative_int("--steps"), required=True, help="LoRA fine-tuning steps (0: convert only)"
    )
    p.add_argument(
        "--transfer-steps",
        type=non_negative_int("--transfer-steps"),
        default=None,
        help="Lizard attention-transfer steps (default: --steps)",
    )
    p.add_argument(
        "--seq-len",
        type=bounded_int("--seq-len", 2),
        default=512,
        help="tokens per training block (at most the base model's context length)",
    )
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1, help="blocks per step")
    p.add_argument("--lr", type=positive_float("--lr"), default=1e-3, help="LoRA learning rate (Liger's paper: 1e-3)")
    p.add_argument(
        "--transfer-lr",
        type=positive_float("--transfer-lr"),
        default=1e-2,
        help="Lizard attention-transfer learning rate",
    )
    p.add_argument("--lora-r", type=positive_int("--lora-r"), default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=positive_int("--lora-alpha"), default=None, help="LoRA alpha (default: 2 * r)")
    p.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated names of the linear layers that get LoRA adapters (default: q_proj,k_proj,"
        "v_proj; qkv_proj for Phi-3)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,  # checked by check_method, before anything loads
        help="sliding window: keys a query sees, itself included (default: Liger 64, Lizard 128)",
    )
    hybrid = p.add_mutually_exclusive_group()
    hybrid.add_argument(
        "--softmax-every",
        type=positive_int("--softmax-every"),
        default=None,
        help="hybrid layout: every K-th layer (K-1, 2K-1, ...) keeps the teacher's softmax attention",
    )
    hybrid.add_argument(
        "--softmax-layers",
        type=layer_list,
        default=None,
        help="hybrid layout: comma-separated layer indices that keep the teacher's softmax attention",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")
    p.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def layer_list(text: str) -> list[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--softmax-layers must be comma-separated layer indices, got {text!r}"
        ) from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"--softmax-layers must be comma-separated layer indices >= 0, got {text!r}")
    return layers


def _status(progress: bool, message: str) -> None:
    if progress:  # stages without a bar of their own say what they are doing
        import sys

        print(f"{message} ...", file=sys.stderr, flush=True)


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from ..evaluation.perplexity import describe_method, perplexity_of_ids
    from ..hub import card_data_of
    from ..linearize import add_lora, attention_transfer, finetune, linearize, load_llama, token_blocks
    from ..linearize.convert import check_method, teacher_shape
    from ..linearize.train import check_lora_targets
    from ..saving import check_output_target, safe_output_folder

    # -- every check before anything is loaded --
    needs = {"peft": "LoRA fine-tuning, --steps > 0"} if args.steps > 0 else {}
    if args.gguf_file:
        needs["gguf"] = "reading --gguf-file"
    require_packages("linearize", needs)
    options = {} if args.window is None else {"window_size": args.window}
    if args.softmax_every is not None:
        options["softmax_every"] = args.softmax_every
    if args.softmax_layers is not None:
        options["softmax_layers"] = args.softmax_layers
    check_method(args.method, options)
    check_output_folder("--out", args.out)
    inputs = [args.model, args.train_text, args.eval_text]
    if args.gguf_file:
        inputs.append(args.gguf_file if os.path.isabs(args.gguf_file) else os.path.join(args.model, args.gguf_file))
    check_output_target(args.out, inputs=inputs, overwrite=args.overwrite)
    gguf_path = check_model_folder("--model", args.model, args.gguf_file)
    teacher = teacher_shape(args.model, gguf_path)
    if teacher["model_type"] is not None:
        from hf_seqmodels.layers.families import get_family

        get_family(teacher["model_type"], f"--model {args.model!r}")  # an unsupported family, before anything loads
    if teacher["num_layers"] is not None and args.softmax_layers is not None:
        from hf_seqmodels.models.linearized import check_softmax_layers

        check_softmax_layers("--softmax-layers", args.softmax_layers, teacher["num_layers"])
    targets = check_lora_targets(args.lora_targets, args.method, options, teacher["model_type"])
    context = teacher["context_length"]
    if context is not None and args.seq_len > context:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the base model's context length ({context})")
    train_text = read_text("--train-text", args.train_text)
    eval_text = read_text("--eval-text", args.eval_text) if args.eval_text else None
    progress = not args.no_progress
    t0 = time.time()
    # the tokenizer and texts next (cheap), so a text too short for --seq-len fails before the weights load
    _status(
        progress,
        "loading the tokenizer" + (" from the GGUF file (its vocabulary takes a minute)" if args.gguf_file else ""),
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    try:
        train = token_blocks(tokenizer, train_text, args.seq_len)
    except ValueError as err:
        raise ValueError(f"--train-text {args.train_text!r} is too short for --seq-len {args.seq_len}: {err}") from None
    held_out, card = None, {}
    if eval_text is not None:
        ctx = min(args.seq_len, args.eval_tokens)
        try:  # whole windows of ctx tokens, so that the card's figure is `eval ppl`'s with the same settings
            held_out = token_blocks(tokenizer, eval_text, ctx, max_tokens=args.eval_tokens).flatten()
        except ValueError as err:
            raise ValueError(f"--eval-text {args.eval_text!r} is too short: {err}") from None

    _status(progress, f"loading the base model from {args.gguf_file or args.model}")
    llama = load_llama(args.model, gguf_file=args.gguf_file, dtype=getattr(torch, args.dtype)).to(args.device)
    base = (
        f"{args.model}/{args.gguf_file}"
        if args.gguf_file and not os.path.isabs(args.gguf_file)
        else (args.gguf_file or args.model)
    )

    def ppl(model, stage):
        desc = f"perplexity {stage}"
        value = perplexity_of_ids(model, held_out, context=ctx, stride=ctx, progress=progress, desc=desc)
        return f"{value:.2f}"

    if held_out is not None:
        card["perplexity of the base model"] = ppl(llama, "of the base model")
    model = linearize(llama, args.method, base_model=base, **options)
    del llama
    if held_out is not None:
        card["perplexity right after conversion"] = ppl(model, "after conversion")
    if args.method == "lizard":
        steps = args.steps if args.transfer_steps is None else args.transfer_steps
        attention_transfer(model, train, steps, lr=args.transfer_lr, batch_size=args.batch_size, progress=progress)
        card["attention transfer"] = f"{steps * args.batch_size * args.seq_len} tokens, lr {args.transfer_lr}"
        if held_out is not None:
            card["perplexity after attention transfer"] = ppl(model, "after attention transfer")
    if args.steps > 0:
        card_before = getattr(model, "card_data", None)
        model = add_lora(model, r=args.lora_r, alpha=args.lora_alpha, target_modules=targets)
        finetune(model, train, args.steps, lr=args.lr, batch_size=args.batch_size, progress=progress)
        card["LoRA fine-tune"] = (
            f"r={args.lora_r} on {','.join(targets)}, "
            f"{args.steps * args.batch_size * args.seq_len} tokens, lr {args.lr}"
        )
        model = model.merge_and_unload()  # plain weights: the result loads with AutoModelForCausalLM alone
        if card_before is not None:
            model.card_data = card_before
        if held_out is not None:
            card["perplexity after fine-tuning"] = ppl(model, "after fine-tuning")
    if held_out is not None:
        name = os.path.basename(args.eval_text)
        card["held-out text"] = f"{name}, {describe_method(ctx, ctx, held_out.numel())}"
        card["reproduce a perplexity"] = (
            f"hf-seqmodels eval ppl --model MODEL --text {name} --context {ctx} "
            f"--stride {ctx} --max-tokens {held_out.numel()}"
        )
    card_data_of(model).update(card)
    with safe_output_folder(args.out, inputs=inputs, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"saved {args.method} model to {args.out} in {time.time() - t0:.0f} s")
    for key, value in card.items():
        print(f"  {key}: {value}")
    return 0
