"""``hf-seqmodels eval mqar`` (Zoology's recall benchmark), ``eval state-tracking`` (parity, cycle navigation, modular
arithmetic, A5) and ``eval ppl`` (sliding-window perplexity)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..evaluation.mqar import MQAR_CONFIGS, ZOOLOGY_PAIRS
from ..evaluation.state_tracking import MODELS, TASKS
from .args import (
    HelpFormatter,
    bounded_int,
    check_model_folder,
    check_output_file,
    device,
    existing_file,
    non_negative_int,
    positive_int,
    positive_list,
    read_text,
    require_packages,
)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in seeds):
        raise argparse.ArgumentTypeError(f"--seeds must be >= 0, got {text!r}")
    return seeds


def _config_field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set must be FIELD=VALUE (e.g. recurrent_init=xlstm), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare string


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluations: MQAR recall, state tracking, perplexity",
        formatter_class=HelpFormatter,
        description="Evaluations: `eval mqar` (Zoology's multi-query associative recall), "
        "`eval state-tracking` (parity, cycle navigation, modular arithmetic, A5) "
        "and `eval ppl` (sliding-window perplexity of a saved model on a text "
        "file).",
    )
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="EVAL")

    m = sub.add_parser(
        "mqar",
        help="train and score on Zoology's multi-query associative recall",
        formatter_class=HelpFormatter,
        description="Train a fresh model per (d_model, L, K, lr) on MQAR and print the test accuracy at the query "
        "positions, best over the learning rates. Zoology: 100k train / 3k test, 64 epochs, vocab 8192.",
    )
    m.add_argument(
        "--config",
        default="gla",
        help=f"one of {sorted(MQAR_CONFIGS)} or a path to a config json (used as is: its own width, "
        "depth and vocabulary)",
    )
    m.add_argument("--d-model", type=positive_list(int, "--d-model"), default=[64], help="comma-separated widths")
    m.add_argument("--layers", type=positive_int("--layers"), default=2, help="blocks per model")
    m.add_argument("--heads", type=positive_int("--heads"), default=1, help="heads per mixer")
    m.add_argument("--vocab-size", type=positive_int("--vocab-size"), default=8192, help="MQAR vocabulary")
    m.add_argument("--lens", type=positive_list(int, "--lens"), default=[64, 128, 256], help="sequence lengths L")
    m.add_argument(
        "--pairs",
        type=positive_list(int, "--pairs"),
        default=None,
        help=f"key-value pairs K, one per length (default: Zoology's {ZOOLOGY_PAIRS})",
    )
    m.add_argument(
        "--lrs",
        type=positive_list(float, "--lrs"),
        default=[1e-4, 4.6e-4, 2.2e-3, 1e-2],
        help="learning rates (Zoology: logspace(-4, -2, 4))",
    )
    m.add_argument("--num-train", type=positive_int("--num-train"), default=20000, help="training examples")
    m.add_argument("--num-test", type=positive_int("--num-test"), default=1000, help="test examples")
    m.add_argument("--epochs", type=positive_int("--epochs"), default=4, help="passes over the training examples")
    m.add_argument("--batch-size", type=positive_int("--batch-size"), default=64, help="examples per step")
    m.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    m.add_argument("--seed", type=non_negative_int("--seed"), default=0, help="random seed (data and init)")
    m.add_argument("--out", default=None, help="also write the results to this JSON file")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=run_mqar)

    s = sub.add_parser(
        "state-tracking",
        help="train from scratch on a state-tracking task, score per length",
        formatter_class=HelpFormatter,
        description="Train a fresh model on parity, cycle navigation, modular arithmetic or the A5 word problem "
        "(hf_seqmodels/evaluation/state_tracking.py documents the generators) at one length, and score "
        "the final-state accuracy at that length and longer ones, for every learning rate and seed.",
    )
    s.add_argument("--task", required=True, choices=sorted(TASKS), help="the automaton to track")
    s.add_argument(
        "--config",
        default="paragru",
        help=f"one of {list(MODELS)} (dense-*: torch.nn.GRU/LSTM) or a path to a config json",
    )
    s.add_argument("--length", type=positive_int("--length"), default=32, help="trained sequence length")
    s.add_argument(
        "--test-lengths",
        type=positive_list(int, "--test-lengths"),
        default=None,
        help="comma-separated lengths to score (default: 1x, 2x and 4x the trained length)",
    )
    s.add_argument("--steps", type=positive_int("--steps"), default=1000, help="training steps (fresh batches)")
    s.add_argument("--batch-size", type=positive_int("--batch-size"), default=64, help="sequences per step")
    s.add_argument("--lrs", type=positive_list(float, "--lrs"), default=[3e-3], help="learning rates (a sweep)")
    s.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (init and data)")
    s.add_argument("--d-model", type=positive_int("--d-model"), default=64, help="width")
    s.add_argument("--layers", type=positive_int("--layers"), default=1, help="blocks (recurrent layers)")
    s.add_argument("--num-test", type=positive_int("--num-test"), default=512, help="held-out sequences per length")
    s.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    s.add_argument(
        "--set",
        dest="overrides",
        type=_config_field,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config field of the model, repeatable; the value is read as JSON, "
        "else as a string (e.g. --set recurrent_init=xavier_clipped --set recurrent_clip=0.9; the "
        "ParaRNN models default to recurrent_init=uniform here)",
    )
    s.add_argument("--out", default=None, help="also write the results to this JSON file")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_state_tracking)

    q = sub.add_parser(
        "ppl",
        help="sliding-window perplexity of a saved model on a text file",
        description="Strided-window perplexity of any causal LM folder, GGUF file or Hub id, with its "
        "own tokenizer, on a UTF-8 text file (tokenized without special tokens). Windows "
        "of --context tokens start every --stride tokens; each token is scored once, in "
        "the first window holding it and the token before it. --stride < --context: "
        "every token but the first is scored; --stride = --context: non-overlapping "
        "blocks, the first token of each unscored (the method of the model cards "
        "`linearize` writes).",
        formatter_class=HelpFormatter,
    )
    q.add_argument(
        "--model", required=True, help="model folder or Hub id (its tokenizer is loaded from the same place)"
    )
    q.add_argument("--text", required=True, type=existing_file("--text"), help="UTF-8 text file to score")
    q.add_argument("--gguf-file", default=None, help="GGUF file inside the model folder (or an absolute path)")
    q.add_argument("--context", type=bounded_int("--context", 2), default=512, help="tokens per window")
    q.add_argument(
        "--stride",
        type=positive_int("--stride"),
        default=None,
        help="tokens between window starts, at most --context (default: context // 2)",
    )
    q.add_argument(
        "--max-tokens",
        type=bounded_int("--max-tokens", 2),
        default=None,
        help="score only the text's first tokens (default: all of them)",
    )
    q.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=run_ppl)
    return p


def run_mqar(args: argparse.Namespace) -> int:
    from ..evaluation.mqar import make_mqar_config, train_and_score

    if args.out:
        check_output_file("--out", args.out)  # before the training, not at the final write
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
                accs[lr] = train_and_score(
                    config,
                    L,
                    K,
                    args.num_train,
                    args.num_test,
                    lr,
                    args.epochs,
                    args.batch_size,
                    args.device,
                    progress=not args.no_progress,
                    seed=args.seed,
                )
            best = max(accs, key=accs.get)
            rows.append(
                {
                    "config": args.config,
                    "d_model": config.hidden_size,
                    "L": L,
                    "K": K,
                    "accuracy": accs[best],
                    "best_lr": best,
                    "by_lr": {str(k): v for k, v in accs.items()},
                    "seconds": time.time() - start,
                }
            )
            print(
                f"{args.config} d={config.hidden_size} L={L} K={K}: acc {accs[best]:.3f} (lr {best:g}; "
                + ", ".join(f"{lr:g}: {a:.3f}" for lr, a in accs.items())
                + f") {time.time() - start:.0f}s",
                flush=True,
            )
    print(
        f"\nMQAR, {args.num_train} train / {args.num_test} test, {args.epochs} epochs, batch {args.batch_size}, "
        f"vocab {config.vocab_size}, {args.layers} layers, best of lrs {args.lrs}\n"
    )
    print("| config | d_model | L | K | accuracy | best lr |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['d_model']} | {r['L']} | {r['K']} | {r['accuracy']:.3f} | {r['best_lr']:g} |")
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "func"}
        path.write_text(
            json.dumps({"settings": settings, "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=2)
        )
        print(f"\nwrote {path}")
    return 0


def run_state_tracking(args: argparse.Namespace) -> int:
    from ..evaluation.state_tracking import sweep

    if args.out:
        check_output_file("--out", args.out)
    results = sweep(
        args.task,
        [args.config],
        args.lrs,
        args.seeds,
        out=args.out,
        train_length=args.length,
        test_lengths=args.test_lengths,
        steps=args.steps,
        batch_size=args.batch_size,
        d_model=args.d_model,
        layers=args.layers,
        num_test=args.num_test,
        device=args.device,
        progress=not args.no_progress,
        **dict(args.overrides),
    )
    lengths = list(results[0]["accuracy"])
    print(
        f"\n{args.task}, trained at length {args.length}, {args.steps} steps x batch {args.batch_size}; "
        "final-state accuracy (all labelled positions in brackets)\n"
    )
    print("| config | lr | seed | " + " | ".join(f"L={k}" for k in lengths) + " | Newton it/solve (fallbacks) |")
    print("|---|---|---|" + "---|" * len(lengths) + "---|")
    for r in results:
        nw = r.get("newton")
        nw = f"{nw['mean_iterations']:.2f} ({nw['fallbacks']})" if nw and nw["solves"] else "-"
        print(
            f"| {r['config']} | {r['lr']:g} | {r['seed']} | "
            + " | ".join(f"{r['accuracy'][k]['last']:.3f} ({r['accuracy'][k]['all']:.3f})" for k in lengths)
            + f" | {nw} |"
        )
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_seqmodels  # noqa: F401  (registers our architectures with the Auto classes)

    from ..evaluation.perplexity import describe_method, perplexity_of_ids, text_ids

    # every check before anything is loaded
    if args.stride is not None and args.stride > args.context:
        raise ValueError(f"--stride {args.stride} must be at most --context {args.context}")
    if args.gguf_file:
        require_packages("eval ppl", {"gguf": "reading --gguf-file"})
    check_model_folder("--model", args.model, args.gguf_file)
    text = read_text("--text", args.text)
    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(args.model, **kw)
    ids = text_ids(tokenizer, text, args.max_tokens)
    if ids.numel() < 2:
        raise ValueError(f"--text {args.text!r} has {ids.numel()} token(s): at least 2 are needed to score one")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **kw).to(args.device)
    stride = args.context // 2 if args.stride is None else args.stride
    ppl = perplexity_of_ids(model, ids, context=args.context, stride=stride, progress=not args.no_progress)
    print(f"perplexity {ppl:.3f} ({args.model}, {args.text}: {describe_method(args.context, stride, ids.numel())})")
    return 0
