"""``hf-seqmodels linearize``: convert a Llama-shaped decoder (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3,
Phi-3), recover it with (attention transfer and) LoRA, save it.

    hf-seqmodels linearize --model PATH [--gguf-file F] --method liger --out DIR --train-text FILE --steps N
                           [--softmax-every K | --softmax-layers I,J,...]

Every flag, the output folder, the model folder (and GGUF file) and the texts are checked before the model is
loaded; each stage (perplexities, attention transfer, LoRA) shows a progress bar.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from ..cli_types import (HelpFormatter, bounded_int, check_model_folder, check_output_folder, device, existing_file,
                         non_negative_int, positive_float, positive_int)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "linearize",
        help="convert a Llama-shaped decoder into a linear-time model (Liger, Lizard) and fine-tune it",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="Llama, Mistral, Qwen2/2.5, Qwen3 or Phi-3 checkpoint: a safetensors folder or Hub id, or the "
                        "folder of --gguf-file")
    p.add_argument("--gguf-file", default=None, help="GGUF file (in --model's folder, or an absolute path)")
    p.add_argument("--method", default="liger", choices=["liger", "lizard"], help="linearization method")
    p.add_argument("--out", required=True, help="output folder (model, tokenizer, model card)")
    p.add_argument("--train-text", required=True, type=existing_file("--train-text"),
                   help="UTF-8 text file to fine-tune on")
    p.add_argument("--eval-text", default=None, type=existing_file("--eval-text"),
                   help="held-out text: perplexities of the base and result go into the model card")
    p.add_argument("--eval-tokens", type=bounded_int("--eval-tokens", 2), default=4096,
                   help="tokens of --eval-text to score")
    p.add_argument("--steps", type=non_negative_int("--steps"), required=True,
                   help="LoRA fine-tuning steps (0: convert only)")
    p.add_argument("--transfer-steps", type=non_negative_int("--transfer-steps"), default=None,
                   help="Lizard attention-transfer steps (default: --steps)")
    p.add_argument("--seq-len", type=bounded_int("--seq-len", 2), default=512,
                   help="tokens per training block (at most the base model's context length)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1, help="blocks per step")
    p.add_argument("--lr", type=positive_float("--lr"), default=1e-3, help="LoRA learning rate (Liger's paper: 1e-3)")
    p.add_argument("--transfer-lr", type=positive_float("--transfer-lr"), default=1e-2,
                   help="Lizard attention-transfer learning rate")
    p.add_argument("--lora-r", type=positive_int("--lora-r"), default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=positive_int("--lora-alpha"), default=None, help="LoRA alpha (default: 2 * r)")
    p.add_argument("--lora-targets", default=None,
                   help="comma-separated names of the linear layers that get LoRA adapters (default: q_proj,k_proj,"
                        "v_proj; qkv_proj for Phi-3)")
    p.add_argument("--window", type=int, default=None,  # checked by check_method, before anything loads
                   help="sliding window: keys a query sees, itself included (default: Liger 64, Lizard 128)")
    hybrid = p.add_mutually_exclusive_group()
    hybrid.add_argument("--softmax-every", type=positive_int("--softmax-every"), default=None,
                        help="hybrid layout: every K-th layer (K-1, 2K-1, ...) keeps the teacher's softmax attention")
    hybrid.add_argument("--softmax-layers", type=layer_list, default=None,
                        help="hybrid layout: comma-separated layer indices that keep the teacher's softmax attention")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")
    p.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def layer_list(text: str) -> list[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--softmax-layers must be comma-separated layer indices, got {text!r}") from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"--softmax-layers must be comma-separated layer indices >= 0, got {text!r}")
    return layers


def teacher_shape(model: str, gguf_path: str | None) -> tuple[str | None, int | None]:
    """The teacher's (``model_type``, number of layers) from its config.json or GGUF metadata (no weights read);
    (None, None) for a Hub id."""
    if gguf_path is not None:
        from ..hub import gguf_metadata
        from .convert import GGUF_ARCHITECTURES

        meta = gguf_metadata(gguf_path)
        arch = meta.get("general.architecture", "llama")
        layers = meta.get(f"{arch}.block_count")
        return GGUF_ARCHITECTURES.get(arch, arch), int(layers) if layers else None
    config_file = os.path.join(model, "config.json")
    if os.path.isfile(config_file):
        try:
            config = json.load(open(config_file))
        except ValueError as err:
            raise ValueError(f"--model {model!r}: config.json is not valid JSON ({err})") from None
        return config.get("model_type"), config.get("num_hidden_layers")
    return None, None


def lora_target_choices(method: str, options: dict, model_type: str | None = None) -> list[str]:
    """Names of the linear layers of a ``method`` model converted from a ``model_type`` teacher (None: any family),
    from one-layer, width-16 instances (no weights loaded)."""
    import torch

    from hf_seqmodels.layers.families import FAMILIES

    from .convert import METHODS

    if model_type is None:
        return sorted({name for family in FAMILIES for name in lora_target_choices(method, options, family)})
    config_class, model_class = METHODS[method][:2]
    small = {"window_size": options.get("window_size", 4)}
    config = config_class(vocab_size=8, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, base_model_type=model_type, **small)
    with torch.device("meta"):
        model = model_class(config)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
                  - {"lm_head"})


def check_lora_targets(text: str | None, method: str, options: dict, model_type: str | None = None) -> list[str]:
    """The LoRA targets from ``--lora-targets`` (None: the family's q, k, v), each a linear layer of the model."""
    from hf_seqmodels.layers.families import FAMILIES

    if text is None:
        family = FAMILIES.get(model_type or "llama")
        return list(family.lora_targets if family is not None else FAMILIES["llama"].lora_targets)
    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise ValueError(f"--lora-targets must name at least one linear layer, got {text!r}")
    choices = lora_target_choices(method, options, model_type if model_type in FAMILIES else None)
    unknown = [t for t in targets if t not in choices]
    if unknown:
        teacher = f" converted from a {model_type!r} model" if model_type in FAMILIES else ""
        raise ValueError(f"--lora-targets: {unknown} {'is' if len(unknown) == 1 else 'are'} not a linear layer of a "
                         f"{method} model{teacher}; choose from {choices}")
    return targets


def base_context_length(model: str, gguf_path: str | None) -> int | None:
    """The base model's context length, from its config or GGUF metadata (no weights read)."""
    if gguf_path is not None:
        from ..hub import gguf_metadata

        meta = gguf_metadata(gguf_path)
        arch = meta.get("general.architecture", "llama")
        value = meta.get(f"{arch}.context_length")
        return int(value) if value else None
    config_file = os.path.join(model, "config.json")
    if os.path.isfile(config_file):
        try:
            value = json.load(open(config_file)).get("max_position_embeddings")
        except ValueError as err:
            raise ValueError(f"--model {model!r}: config.json is not valid JSON ({err})") from None
        return int(value) if value else None
    return None  # a Hub id: checked by transformers when it loads


def _read_text(flag: str, path: str) -> str:
    try:
        return open(path, encoding="utf-8").read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {path!r} is not UTF-8 text ({err})") from None


def _status(progress: bool, message: str) -> None:
    if progress:  # stages without a bar of their own say what they are doing
        import sys

        print(f"{message} ...", file=sys.stderr, flush=True)


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from . import add_lora, attention_transfer, finetune, linearize, load_llama, perplexity_of_blocks, token_blocks
    from .convert import check_method

    # -- every check before anything is loaded --
    options = {} if args.window is None else {"window_size": args.window}
    if args.softmax_every is not None:
        options["softmax_every"] = args.softmax_every
    if args.softmax_layers is not None:
        options["softmax_layers"] = args.softmax_layers
    check_method(args.method, options)
    check_output_folder("--out", args.out)
    gguf_path = check_model_folder("--model", args.model, args.gguf_file)
    model_type, num_layers = teacher_shape(args.model, gguf_path)
    if model_type is not None:
        from hf_seqmodels.layers.families import get_family

        get_family(model_type, f"--model {args.model!r}")  # an unsupported family, before anything loads
    if num_layers is not None and args.softmax_layers is not None:
        from hf_seqmodels.models.liger.configuration_liger import check_softmax_layers

        check_softmax_layers("--softmax-layers", args.softmax_layers, num_layers)
    targets = check_lora_targets(args.lora_targets, args.method, options, model_type)
    context = base_context_length(args.model, gguf_path)
    if context is not None and args.seq_len > context:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the base model's context length ({context})")
    progress = not args.no_progress
    t0 = time.time()
    # the tokenizer and texts next (cheap), so a text too short for --seq-len fails before the weights load
    _status(progress, "loading the tokenizer" + (" from the GGUF file (its vocabulary takes a minute)"
                                                 if args.gguf_file else ""))
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    try:
        train = token_blocks(tokenizer, _read_text("--train-text", args.train_text), args.seq_len)
    except ValueError as err:
        raise ValueError(f"--train-text {args.train_text!r} is too short for --seq-len {args.seq_len}: {err}") from None
    held_out, card = None, {}
    if args.eval_text:
        ctx = min(args.seq_len, args.eval_tokens)
        try:
            held_out = token_blocks(tokenizer, _read_text("--eval-text", args.eval_text), ctx,
                                    max_tokens=args.eval_tokens)
        except ValueError as err:
            raise ValueError(f"--eval-text {args.eval_text!r} is too short: {err}") from None

    _status(progress, f"loading the base model from {args.gguf_file or args.model}")
    llama = load_llama(args.model, gguf_file=args.gguf_file, dtype=getattr(torch, args.dtype)).to(args.device)
    base = f"{args.model}/{args.gguf_file}" if args.gguf_file and not os.path.isabs(args.gguf_file) else (
        args.gguf_file or args.model)

    def ppl(model, stage):
        return f"{perplexity_of_blocks(model, held_out, progress=progress, desc=f'perplexity {stage}'):.2f}"

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
        card["LoRA fine-tune"] = (f"r={args.lora_r} on {','.join(targets)}, "
                                  f"{args.steps * args.batch_size * args.seq_len} tokens, lr {args.lr}")
        model = model.merge_and_unload()  # plain weights: the result loads with AutoModelForCausalLM alone
        if card_before is not None:
            model.card_data = card_before
        if held_out is not None:
            card["perplexity after fine-tuning"] = ppl(model, "after fine-tuning")
    if held_out is not None:
        card["held-out text"] = (f"{held_out.numel()} tokens of {os.path.basename(args.eval_text)}, "
                                 f"context {held_out.shape[1]}")
    from ..hub import card_data_of

    card_data_of(model).update(card)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.method} model to {args.out} in {time.time() - t0:.0f} s")
    for key, value in card.items():
        print(f"  {key}: {value}")
    return 0
