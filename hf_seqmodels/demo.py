"""``hf-seqmodels demo``: train a small GLA on real text, report loss and perplexity, save, reload, generate."""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from hf_seqmodels.data import byte_tokens, decode_bytes, default_text, random_windows


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="train a small byte-level GLA on real text, save, reload and generate")
    p.add_argument("--text", help="a UTF-8 text file (default: the stdlib's pydoc topics, ~465 KB of English)")
    p.add_argument("--out", default="demo_out/gla-demo", help="where the trained model is saved")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


@torch.no_grad()
def evaluate(model, tokens, seq_len, batches=8, batch_size=16, generator=None):
    model.eval()
    losses = [model(ids, labels=ids).loss.item() for ids in (random_windows(tokens, batch_size, seq_len, generator) for _ in range(batches))]
    model.train()
    return sum(losses) / len(losses)


def run(args):
    import hf_seqmodels
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    text = open(args.text, encoding="utf-8").read() if args.text else default_text()
    tokens = byte_tokens(text)
    split = int(tokens.numel() * 0.9)
    train, held_out = tokens[:split], tokens[split:]
    config = hf_seqmodels.GLAConfig(
        vocab_size=256, hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_heads=4,
        use_short_conv=True, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GLA: {n_params / 1e6:.2f}M parameters, {tokens.numel() / 1e3:.0f}K bytes of text ({'--text' if args.text else 'pydoc topics'})")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.time()
    bar = tqdm(range(args.steps), desc="training")
    for _ in bar:
        ids = random_windows(train, args.batch_size, args.seq_len, gen)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.time() - start
    val = evaluate(model, held_out, args.seq_len, generator=torch.Generator().manual_seed(1))
    print(f"trained {args.steps} steps in {elapsed:.0f} s; held-out loss {val:.3f} nats/byte, "
          f"perplexity {math.exp(val):.2f}, {val / math.log(2):.3f} bits/byte")
    model.config.card_data = {"held-out perplexity (bytes)": f"{math.exp(val):.2f}", "training steps": args.steps}
    model.save_pretrained(args.out)
    reloaded = AutoModelForCausalLM.from_pretrained(args.out).eval()
    prompt = byte_tokens("The ")[None]
    sample = reloaded.generate(prompt, max_new_tokens=120, do_sample=True, top_k=20, temperature=0.8, pad_token_id=0)
    print(f"saved to {args.out} and reloaded through AutoModelForCausalLM; sample:\n---\n{decode_bytes(sample[0])}\n---")
    return 0
