"""H-Net against an isotropic byte-level Llama: bits per byte, compression and decoding speed, CPU-sized.

Every model sees the same training budget (steps x batch x context bytes, the same windows in the same order) from
the first 90% of tinyshakespeare; bits per byte are measured on the last 10% (non-overlapping windows, each with a
BOS in front so that every byte of the window is predicted; ``lm_loss`` only, never the ratio loss; nats -> bits)
and out of domain on Python's ``pydoc_data.topics`` text.

Variants (``train --variant NAME``):
  - ``hnet``: ``HNetConfig()`` (1 stage, ["m2", ["T4"], "m2"], d [128, 256], N = 6), learned router;
  - ``llama``: a byte-level ``LlamaForCausalLM`` (vocab 256, untied embeddings like H-Net), d 256, 4 layers, 4 heads,
    MLP width chosen so that the parameter count matches ``hnet`` (within 1%);
  - ``word``: ``hnet`` with ``boundary_router="word"`` (HAT's fixed rule);
  - ``hnet_n2`` / ``hnet_n4``: ``hnet`` with target compression N = 2 / 4 (the sweep; ``hnet`` is N = 6).

    python -m benchmarks.hnet_bpb train --variant hnet          # one model -> results/hnet_run_hnet.json
    python -m benchmarks.hnet_bpb speed --model /tmp/hnet_bpb_models/hnet   # decoding bytes/s, cache vs none
    python -m benchmarks.hnet_bpb report                         # merge -> results/hnet_bpb.{json,png,md}
    python -m benchmarks.hnet_bpb all                            # all of the above, one after the other

Recorded run (two processes side by side, 1 thread each): `train --variant hnet`, `llama`, `word` (300 steps each),
`train --variant hnet_n2 --steps 150`, `hnet_n4 --steps 150`, then `speed` and `report`.

Runs are separate processes so that two can train side by side (``--threads 1`` each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

import hf_seqmodels  # noqa: F401  (registers the architectures)
from hf_seqmodels import ByteTokenizer, HNetConfig, HNetForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
BOS = 254
VARIANTS = ("hnet", "llama", "word", "hnet_n2", "hnet_n4")
LN2 = math.log(2)


# -- data -------------------------------------------------------------------------------------------------------------
def load_bytes(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = open(path, "rb").read()
    cut = int(len(data) * 0.9)
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    return as_tensor(data[:cut]), as_tensor(data[cut:])


def ood_bytes(max_bytes: int) -> torch.Tensor:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")[:max_bytes]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def with_bos(windows: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full((windows.shape[0], 1), BOS, dtype=torch.long), windows], 1)


def eval_windows(data: torch.Tensor, context: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping ``context``-byte windows (the tail shorter than a window is dropped), BOS in front."""
    n = len(data) // context
    if max_windows:
        n = min(n, max_windows)
    return with_bos(data[: n * context].view(n, context))


@torch.no_grad()
def bits_per_byte(model, windows: torch.Tensor, batch_size: int) -> tuple[float, list[float] | None]:
    """(bits per byte of the windows' bytes, mean boundary fraction per stage or None)."""
    was_training = model.training
    model.eval()
    nats, count, fracs = 0.0, 0, []
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        out = model(input_ids=x, use_cache=False)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
        nats -= logp.gather(-1, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
        if getattr(out, "boundary_fractions", None) is not None:
            fracs.append((out.boundary_fractions.double() * len(x)).tolist())
    model.train(was_training)
    frac = [sum(f[s] for f in fracs) / len(windows) for s in range(len(fracs[0]))] if fracs else None
    return nats / count / LN2, frac


# -- models -----------------------------------------------------------------------------------------------------------
def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def llama_matched(target: int, d: int = 256, layers: int = 4, heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    # per layer: 4 d^2 (q, k, v, o) + 3 d I (SwiGLU) + 2 d (norms); plus 2 x 256 d embeddings/head and a final norm
    fixed = layers * (4 * d * d + 2 * d) + 2 * 256 * d + d
    inter = max(32, round((target - fixed) / (3 * d * layers) / 32) * 32)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=255,
        pad_token_id=253,
    )
    return LlamaForCausalLM(cfg)


def build(variant: str):
    if variant == "llama":
        return llama_matched(n_params(HNetForCausalLM(HNetConfig())))
    kw = {
        "word": dict(boundary_router="word"),
        "hnet_n2": dict(compression_ratio=[2.0]),
        "hnet_n4": dict(compression_ratio=[4.0]),
    }.get(variant, {})
    return HNetForCausalLM(HNetConfig(**kw))


def param_groups(model, lr: float, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith(".bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# -- training ---------------------------------------------------------------------------------------------------------
def train(args) -> dict:
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    train_data, held_out = load_bytes(args.data)
    torch.manual_seed(args.seed)
    model = build(args.variant)
    model.train()
    is_hnet = isinstance(model, HNetForCausalLM)
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 10)

    def lr_at(step):  # linear warm-up, cosine to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        q = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * q)))

    curve_windows = eval_windows(held_out, args.context, args.curve_windows)
    gen = torch.Generator().manual_seed(args.seed)  # the same windows, in the same order, for every variant
    curve, log = [], []
    t0 = time.time()
    bar = tqdm(range(args.steps), desc=args.variant, disable=args.no_progress, mininterval=5)
    for step in bar:
        if step % args.eval_every == 0 and step > 0:
            bpb, frac = bits_per_byte(model, curve_windows, args.eval_batch)
            curve.append({"step": step, "bpb": bpb, "boundary_fraction": frac})
        starts = torch.randint(0, len(train_data) - args.context, (args.batch_size,), generator=gen)
        x = with_bos(torch.stack([train_data[s : s + args.context] for s in starts.tolist()]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lm = (out.lm_loss if is_hnet else out.loss).item()
        entry = {"step": step, "lm_bpb": lm / LN2}
        if is_hnet:
            entry["boundary_fraction"] = out.boundary_fractions.tolist()
            entry["ratio_loss"] = None if out.ratio_loss is None else out.ratio_loss.item()
        log.append(entry)
        if step % 10 == 0:
            post = {"bpb": f"{lm / LN2:.3f}"}
            if is_hnet:
                post["F"] = ",".join(f"{f:.3f}" for f in out.boundary_fractions.tolist())
            bar.set_postfix(post)
    train_seconds = time.time() - t0
    bpb, frac = bits_per_byte(model, curve_windows, args.eval_batch)
    curve.append({"step": args.steps, "bpb": bpb, "boundary_fraction": frac})
    full = eval_windows(held_out, args.context)
    held_bpb, held_frac = bits_per_byte(model, full, args.eval_batch)
    ood = eval_windows(ood_bytes(args.ood_bytes), args.context)
    ood_bpb, ood_frac = bits_per_byte(model, ood, args.eval_batch)
    result = {
        "variant": args.variant,
        "model": type(model).__name__,
        "params": n_params(model),
        "config": model.config.to_diff_dict()
        if not is_hnet
        else {
            k: getattr(model.config, k, None)
            for k in (
                "arch_layout",
                "d_model",
                "d_intermediate",
                "compression_ratio",
                "ratio_loss_weight",
                "boundary_router",
                "ratio_loss_reduction",
                "lr_multipliers",
                "ssm_cfg",
                "attn_cfg",
            )
        },
        "budget": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "context": args.context,
            "bytes": args.steps * args.batch_size * args.context,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
        },
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / args.steps,
        "held_out": {"bpb": held_bpb, "bytes": full[:, 1:].numel(), "boundary_fraction": held_frac},
        "ood_pydoc": {"bpb": ood_bpb, "bytes": ood[:, 1:].numel(), "boundary_fraction": ood_frac},
        "target_fraction": [1 / n for n in model.config.compression_ratio] if is_hnet else None,
        "curve": curve,
        "curve_windows": len(curve_windows),
        "train_log": log,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(args.threads),
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"hnet_run_{args.variant}.json")
    json.dump(result, open(path, "w"), indent=1)
    if args.save_dir:
        target = os.path.join(args.save_dir, args.variant)
        model.save_pretrained(target)
        if is_hnet:
            ByteTokenizer().save_pretrained(target)
    print(
        f"{args.variant}: held-out {held_bpb:.4f} bpb, pydoc {ood_bpb:.4f} bpb, boundary fraction {held_frac}, "
        f"{train_seconds:.0f}s ({train_seconds / args.steps:.2f}s/step) -> {path}",
        flush=True,
    )
    return result


def machine(threads: int) -> str:
    torch_version = torch.__version__.split("+")[0]
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch_version} CPU, {threads} thread(s)"


# -- decoding speed ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def speed(args) -> dict:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    _, held_out = load_bytes(args.data)
    rows = []
    for batch in args.speed_batches:
        # different prompts per row, so rows hit chunk boundaries at different steps
        prompts = with_bos(torch.stack([held_out[i * 997 : i * 997 + args.prompt_len] for i in range(batch)]))
        mask = torch.ones_like(prompts)
        model.generate(prompts[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=253)
        t = time.perf_counter()
        cached = model.generate(
            prompts,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=253,
        )
        t_cache = time.perf_counter() - t
        ids = prompts
        t = time.perf_counter()
        for _ in range(args.new_tokens):  # the full forward over the whole sequence for every new byte
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        t_full = time.perf_counter() - t
        new = batch * args.new_tokens
        rows.append(
            {
                "batch": batch,
                "prompt_bytes": args.prompt_len + 1,
                "new_bytes": args.new_tokens,
                "cache_bytes_per_s": new / t_cache,
                "full_forward_bytes_per_s": new / t_full,
                "speedup": t_full / t_cache,
                "greedy_equal": bool(torch.equal(cached[:, -args.new_tokens :], ids[:, -args.new_tokens :])),
            }
        )
        print(
            f"batch {batch}: cache {new / t_cache:.1f} B/s, full forward {new / t_full:.1f} B/s "
            f"(x{t_full / t_cache:.1f}), greedy equal: {rows[-1]['greedy_equal']}",
            flush=True,
        )
    result = {
        "model": args.model,
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(args.threads),
    }
    os.makedirs(RESULTS, exist_ok=True)
    json.dump(result, open(os.path.join(RESULTS, "hnet_run_speed.json"), "w"), indent=1)
    return result


# -- report -----------------------------------------------------------------------------------------------------------
LABELS = {
    "hnet": "H-Net 1-stage, learned (N=6)",
    "llama": "isotropic byte Llama",
    "word": "H-Net, word router (HAT)",
    "hnet_n2": "H-Net learned, N=2",
    "hnet_n4": "H-Net learned, N=4",
}


def report(args) -> str:
    runs = {}
    for v in VARIANTS:
        path = os.path.join(RESULTS, f"hnet_run_{v}.json")
        if os.path.isfile(path):
            runs[v] = json.load(open(path))
    speed_path = os.path.join(RESULTS, "hnet_run_speed.json")
    speed_res = json.load(open(speed_path)) if os.path.isfile(speed_path) else None
    if not runs:
        raise SystemExit("no runs in benchmarks/results (run `train --variant ...` first)")
    any_run = next(iter(runs.values()))
    b = any_run["budget"]
    lines = [
        f"H-Net vs isotropic byte Llama, {any_run['date'][:10]}, {any_run['machine']}",
        f"budget per model: {b['steps']} steps x batch {b['batch_size']} x context {b['context']} "
        f"= {b['bytes'] / 1e6:.2f}M bytes of tinyshakespeare (first 90%), AdamW lr {b['lr']:g}, wd "
        f"{b['weight_decay']:g}, "
        "warm-up 10% + cosine to 10%",
        "",
        "| model | params | held-out bpb | pydoc bpb (OOD) | boundary fraction (target) "
        "| wall s/step (loaded machine) |",
        "|---|---|---|---|---|---|",
    ]
    for v in ("hnet", "llama", "word"):
        if v in runs:
            r = runs[v]
            frac = (
                "-"
                if r["held_out"]["boundary_fraction"] is None
                else ", ".join(f"{f:.3f}" for f in r["held_out"]["boundary_fraction"])
                + (f" ({', '.join(f'{t:.3f}' for t in r['target_fraction'])})" if v != "word" else " (fixed rule)")
            )
            lines.append(
                f"| {LABELS[v]} | {r['params'] / 1e6:.2f}M | {r['held_out']['bpb']:.4f} | {r['ood_pydoc']['bpb']:.4f} "
                f"| {frac} | {r['seconds_per_step']:.2f} |"
            )
    sweep = [(v, n) for v, n in (("hnet_n2", 2), ("hnet_n4", 4), ("hnet", 6)) if v in runs]
    if sweep:
        lines += [
            "",
            "| target N | 1/N | selected fraction (held-out) | rel. error | within 20% | held-out bpb | steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for v, n in sweep:
            r = runs[v]
            f = r["held_out"]["boundary_fraction"][0]
            err = f * n - 1
            lines.append(
                f"| {n} | {1 / n:.3f} | {f:.3f} | {err:+.0%} | {'yes' if abs(err) <= 0.2 else 'no'} "
                f"| {r['held_out']['bpb']:.4f} | {r['budget']['steps']} |"
            )
        sweep_steps = {runs[v]["budget"]["steps"] for v, _ in sweep if v != "hnet"}
        for v, n in sweep:  # the longer run read at the sweep's step count too (curve windows, not the full held-out)
            r = runs[v]
            for c in r["curve"]:
                if c["step"] in sweep_steps and c["step"] != r["budget"]["steps"] and c["boundary_fraction"]:
                    f = c["boundary_fraction"][0]
                    lines.append(
                        f"| {n} (at step {c['step']}, {r['curve_windows']} curve windows) | {1 / n:.3f} | {f:.3f} "
                        f"| {f * n - 1:+.0%} | {'yes' if abs(f * n - 1) <= 0.2 else 'no'} "
                        f"| {c['bpb']:.4f} | {c['step']} |"
                    )
    if speed_res:
        lines += [
            "",
            f"decoding ({os.path.basename(speed_res['model'].rstrip('/'))}, greedy, "
            f"{speed_res['rows'][0]['prompt_bytes']}-byte prompt, "
            f"{speed_res['rows'][0]['new_bytes']} new bytes per row)",
            "",
            "| batch | cache bytes/s | full forward per byte, bytes/s | speed-up | same greedy bytes |",
            "|---|---|---|---|---|",
        ]
        for r in speed_res["rows"]:
            lines.append(
                f"| {r['batch']} | {r['cache_bytes_per_s']:.1f} | {r['full_forward_bytes_per_s']:.1f} "
                f"| {r['speedup']:.1f}x | {r['greedy_equal']} |"
            )
    table = "\n".join(lines)
    print(table)
    summary = {
        "runs": {v: {k: r[k] for k in r if k != "train_log"} for v, r in runs.items()},
        "speed": speed_res,
        "table": table,
    }
    json.dump(summary, open(os.path.join(RESULTS, "hnet_bpb.json"), "w"), indent=1)
    open(os.path.join(RESULTS, "hnet_bpb.md"), "w").write(table + "\n")
    plot(runs)
    return table


def plot(runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for v, r in runs.items():
        steps = [c["step"] for c in r["curve"]]
        ax.plot(
            steps, [c["bpb"] for c in r["curve"]], marker="o", ms=3, label=f"{LABELS[v]} ({r['params'] / 1e6:.2f}M)"
        )
        if r["train_log"] and "boundary_fraction" in r["train_log"][0] and r["variant"] != "word":
            ax2.plot(
                [e["step"] for e in r["train_log"]],
                [e["boundary_fraction"][0] for e in r["train_log"]],
                lw=1,
                label=f"{LABELS[v]}",
            )
            ax2.axhline(r["target_fraction"][0], ls=":", color=ax2.lines[-1].get_color())
    b = next(iter(runs.values()))["budget"]
    ax.set(
        xlabel="training step",
        ylabel="held-out bits per byte",
        title=f"tinyshakespeare, batch {b['batch_size']} x {b['context']} bytes per step",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set(
        xlabel="training step",
        ylabel="boundary fraction (stage 0, train batch)",
        title="learned compression vs target 1/N (dotted)",
    )
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "hnet_bpb.png"), dpi=120)
    print(f"wrote {os.path.join(RESULTS, 'hnet_bpb.png')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "speed", "report", "all"])
    p.add_argument("--variant", choices=VARIANTS, default="hnet")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--sweep-steps", type=int, default=150, help="steps of hnet_n2/hnet_n4 in `all` (the recorded run: 150)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--curve-windows", type=int, default=64, help="held-out windows of the learning curve points")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--ood-bytes", type=int, default=65536, help="bytes of pydoc_data.topics text to evaluate on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", default="/tmp/hnet_bpb_models", help="where trained models are saved ('' = nowhere)")
    p.add_argument("--model", default=None, help="speed: a saved H-Net folder (default: SAVE_DIR/hnet)")
    p.add_argument("--speed-batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=63)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.what in ("speed", "all") and args.model is None:
        args.model = os.path.join(args.save_dir, "hnet")
    if args.what == "train":
        train(args)
    elif args.what == "speed":
        speed(args)
    elif args.what == "report":
        report(args)
    else:
        steps = args.steps
        for v in VARIANTS:
            args.variant, args.steps = v, (args.sweep_steps or steps) if v.startswith("hnet_n") else steps
            train(args)
        speed(args)
        report(args)


if __name__ == "__main__":
    main()
