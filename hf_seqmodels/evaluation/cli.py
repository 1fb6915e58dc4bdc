"""``hf-seqmodels eval mqar`` (Zoology's recall benchmark) and ``hf-seqmodels eval ppl`` (sliding-window perplexity)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..cli_types import positive_int, positive_list
from .mqar import MQAR_CONFIGS, ZOOLOGY_PAIRS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluations: MQAR recall, perplexity")
    sub = p.add_subparsers(dest="eval_command", required=True)

    m = sub.add_parser(
        "mqar", help="train and score on Zoology's multi-query associative recall",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a fresh model per (d_model, L, K, lr) on MQAR and print the test accuracy at the query "
                    "positions, best over the learning rates. Zoology: 100k train / 3k test, 64 epochs, vocab 8192.",
    )
    m.add_argument("--config", default="gla",
                   help=f"one of {sorted(MQAR_CONFIGS)} or a path to a config json (used as is: its own width, "
                        "depth and vocabulary)")
    m.add_argument("--d-model", type=positive_list(int, "--d-model"), default=[64], help="comma-separated widths")
    m.add_argument("--layers", type=positive_int("--layers"), default=2)
    m.add_argument("--heads", type=positive_int("--heads"), default=1)
    m.add_argument("--vocab-size", type=positive_int("--vocab-size"), default=8192)
    m.add_argument("--lens", type=positive_list(int, "--lens"), default=[64, 128, 256], help="sequence lengths L")
    m.add_argument("--pairs", type=positive_list(int, "--pairs"), default=None,
                   help=f"key-value pairs K, one per length (default: Zoology's {ZOOLOGY_PAIRS})")
    m.add_argument("--lrs", type=positive_list(float, "--lrs"), default=[1e-4, 4.6e-4, 2.2e-3, 1e-2],
                   help="learning rates (Zoology: logspace(-4, -2, 4))")
    m.add_argument("--num-train", type=positive_int("--num-train"), default=20000)
    m.add_argument("--num-test", type=positive_int("--num-test"), default=1000)
    m.add_argument("--epochs", type=positive_int("--epochs"), default=4)
    m.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    m.add_argument("--device", default="cpu")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default=None, help="also write the results to this JSON file")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=run_mqar)

    q = sub.add_parser("ppl", help="sliding-window perplexity of a saved model on a text file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--model", required=True, help="model folder (its tokenizer is loaded from the same folder)")
    q.add_argument("--text", required=True, help="UTF-8 text file")
    q.add_argument("--gguf-file", default=None, help="GGUF file inside the model folder")
    q.add_argument("--context", type=positive_int("--context"), default=512)
    q.add_argument("--stride", type=positive_int("--stride"), default=None, help="default: context // 2")
    q.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=None)
    q.add_argument("--device", default="cpu")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_ppl)
    return p


def run_mqar(args: argparse.Namespace) -> int:
    from .mqar import make_mqar_config, train_and_score

    if args.pairs is None:
        missing = [L for L in args.lens if L not in ZOOLOGY_PAIRS]
        if missing:
            raise ValueError(f"--pairs is needed for lengths without a Zoology setting: {missing}")
        args.pairs = [ZOOLOGY_PAIRS[L] for L in args.lens]
    if len(args.pairs) != len(args.lens):
        raise ValueError(f"--pairs must give one K per length in --lens ({len(args.lens)}), got {len(args.pairs)}")
    named = args.config in MQAR_CONFIGS
    widths = args.d_model if named else [None]
    rows = []
    for d in widths:
        config = make_mqar_config(args.config, d or 64, args.layers, args.vocab_size, args.heads)
        for L, K in zip(args.lens, args.pairs):
            accs = {}
            start = time.time()
            for lr in args.lrs:
                accs[lr] = train_and_score(config, L, K, args.num_train, args.num_test, lr, args.epochs,
                                           args.batch_size, args.device, progress=not args.no_progress,
                                           seed=args.seed)
            best = max(accs, key=accs.get)
            rows.append({"config": args.config, "d_model": config.hidden_size, "L": L, "K": K,
                         "accuracy": accs[best], "best_lr": best, "by_lr": {str(k): v for k, v in accs.items()},
                         "seconds": time.time() - start})
            print(f"{args.config} d={config.hidden_size} L={L} K={K}: acc {accs[best]:.3f} (lr {best:g}; "
                  + ", ".join(f"{lr:g}: {a:.3f}" for lr, a in accs.items()) + f") {time.time() - start:.0f}s",
                  flush=True)
    print(f"\nMQAR, {args.num_train} train / {args.num_test} test, {args.epochs} epochs, batch {args.batch_size}, "
          f"vocab {config.vocab_size}, {args.layers} layers, best of lrs {args.lrs}\n")
    print("| config | d_model | L | K | accuracy | best lr |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['d_model']} | {r['L']} | {r['K']} | {r['accuracy']:.3f} | {r['best_lr']:g} |")
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        path.write_text(json.dumps({"settings": settings, "date": time.strftime("%Y-%m-%d"), "results": rows},
                                   indent=2))
        print(f"\nwrote {path}")
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_seqmodels  # noqa: F401  (registers our architectures with the Auto classes)

    from .perplexity import perplexity

    if not Path(args.model).is_dir():
        raise ValueError(f"--model must be a model folder, got {args.model!r}")
    if not Path(args.text).is_file():
        raise ValueError(f"--text must be a text file, got {args.text!r}")
    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(args.model, **kw)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **kw).to(args.device)
    text = Path(args.text).read_text(encoding="utf-8")
    ppl = perplexity(model, tokenizer, text, context=args.context, stride=args.stride, max_tokens=args.max_tokens,
                     progress=not args.no_progress)
    print(f"perplexity {ppl:.3f} ({args.model}, {args.text}, context {args.context})")
    return 0


def main(argv=None) -> int:
    """``python -m hf_seqmodels.evaluation.cli mqar ...``: the ``eval`` command on its own."""
    parser = argparse.ArgumentParser(prog="hf-seqmodels")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(argv or [])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
