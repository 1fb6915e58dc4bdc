"""``hf-seqmodels demo``: train a small GLA on real text, report loss and perplexity, save, reload, generate."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..data import byte_tokens, decode_bytes, default_text, random_windows
from .args import (
    HelpFormatter,
    bounded_int,
    check_output_folder,
    device,
    existing_file,
    non_negative_int,
    positive_float,
    positive_int,
    read_text,
)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "demo",
        help="train a small byte-level GLA on real text, save, reload and generate",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--text",
        type=existing_file("--text"),
        help="a UTF-8 text file to train on (default: the stdlib's pydoc topics, ~465 KB of English)",
    )
    p.add_argument(
        "--out",
        default="demo_out/gla-demo",
        help="folder the trained model, its byte tokenizer and model card are saved to",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder (only once the new model is complete)",
    )
    p.add_argument("--steps", type=positive_int("--steps"), default=300, help="training steps")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16, help="sequences per step")
    p.add_argument("--seq-len", type=bounded_int("--seq-len", 2), default=128, help="bytes per training sequence")
    p.add_argument(
        "--hidden-size", type=positive_int("--hidden-size"), default=128, help="model width (a multiple of the 4 heads)"
    )
    p.add_argument("--layers", type=positive_int("--layers"), default=4, help="GLA blocks")
    p.add_argument("--lr", type=positive_float("--lr"), default=3e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--seed", type=non_negative_int("--seed"), default=0, help="random seed")
    p.add_argument("--device", type=device("--device"), default="cpu", help="torch device to train on (cpu, cuda, ...)")
    p.set_defaults(func=run)


def run(args):
    from transformers import AutoModelForCausalLM

    import hf_seqmodels

    from ..evaluation.perplexity import describe_method, perplexity_of_ids
    from ..saving import check_output_target, safe_output_folder

    if args.hidden_size % 4:
        raise ValueError(f"--hidden-size must be a multiple of the 4 heads, got {args.hidden_size}")
    check_output_folder("--out", args.out)  # before training, not at the final save
    check_output_target(args.out, inputs=[args.text], overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    text = read_text("--text", args.text) if args.text else default_text()
    tokens = byte_tokens(text)
    split = int(tokens.numel() * 0.9)
    train, held_out = tokens[:split], tokens[split:]
    shortest = min(train.numel(), held_out.numel())
    if shortest <= args.seq_len:
        raise ValueError(
            f"--text is too short for --seq-len {args.seq_len}: its held-out tenth has {shortest} bytes "
            f"(give at least {10 * (args.seq_len + 1)} bytes of text, or a smaller --seq-len)"
        )
    dev = torch.device(args.device)
    config = hf_seqmodels.GLAConfig(
        vocab_size=256,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_heads=4,
        use_short_conv=True,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"GLA: {n_params / 1e6:.2f}M parameters, {tokens.numel() / 1e3:.0f}K bytes of text "
        f"({'--text' if args.text else 'pydoc topics'})"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.time()
    bar = tqdm(range(args.steps), desc="training")
    for _ in bar:
        ids = random_windows(train, args.batch_size, args.seq_len, gen).to(dev)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.time() - start
    ppl = perplexity_of_ids(
        model,
        held_out,
        context=args.seq_len,
        stride=args.seq_len,
        batch_size=args.batch_size,
        desc="held-out perplexity",
    )
    val = math.log(ppl)
    print(
        f"trained {args.steps} steps in {elapsed:.0f} s; held-out loss {val:.3f} nats/byte, "
        f"perplexity {ppl:.2f}, {val / math.log(2):.3f} bits/byte"
    )
    model.card_data = {
        "held-out perplexity (bytes)": f"{ppl:.2f}",
        "training steps": args.steps,
        "held-out text": f"the last tenth of the text, {describe_method(args.seq_len, args.seq_len, held_out.numel())}",
    }
    with safe_output_folder(args.out, inputs=[args.text], overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp)
        # the byte tokenizer goes with the model, so pipeline(), `eval ppl` and the Hub page load it from the folder;
        # the demo trains on raw bytes (no BOS), so none is added
        hf_seqmodels.ByteTokenizer(add_bos_token=False).save_pretrained(tmp)
    reloaded = AutoModelForCausalLM.from_pretrained(args.out).to(dev).eval()
    prompt = byte_tokens("The ")[None].to(dev)
    sample = reloaded.generate(prompt, max_new_tokens=120, do_sample=True, top_k=20, temperature=0.8, pad_token_id=0)
    print(
        f"saved to {args.out} (model, byte tokenizer, model card) and reloaded through AutoModelForCausalLM; "
        f"sample:\n---\n{decode_bytes(sample[0].cpu())}\n---"
    )
    return 0
