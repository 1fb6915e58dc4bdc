"""``hf-seqmodels cola-search``: search a layer path (CoLa: layers skipped or repeated) per prompt of a JSONL file with
Monte Carlo tree search, and write the paths found and their rewards as JSON.

    hf-seqmodels cola-search --model PATH [--gguf-file F] --data prompts.jsonl --out paths.json
                             [--reward loglik|match] [--simulations N] [--seed S]

Each line of --data is a JSON object with a "prompt" and an "answer" (strings). --reward loglik (default) scores a
path by the log-likelihood of the answer given the prompt; match by whether greedy decoding reproduces the answer
(1 or 0). The output holds, per line: the prompt, the answer, the model's own reward, the best path found, its
reward, its length, and the search's cost (distinct paths evaluated, decoder layers run, seconds).
"""

from __future__ import annotations

import json
import os
import time

from .args import (
    HelpFormatter,
    add_decoder_arguments,
    bounded_int,
    check_model_folder,
    check_output_file,
    existing_file,
    non_negative_int,
    positive_int,
    read_text,
    require_packages,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cola-search",
        help="find per-prompt layer paths (skip / repeat layers) of a Llama-family decoder by tree search",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_decoder_arguments(p)
    p.add_argument(
        "--data", required=True, type=existing_file("--data"), help='JSONL file: {"prompt": ..., "answer": ...} a line'
    )
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--reward", default="loglik", choices=["loglik", "match"], help="what a path is scored by")
    p.add_argument(
        "--simulations", type=non_negative_int("--simulations"), default=64, help="MCTS simulations per prompt"
    )
    p.add_argument("--seed", type=int, default=0, help="the search's seed (the order untried actions are expanded)")
    p.add_argument("--min-length", type=positive_int("--min-length"), default=None, help="shortest path (default L/2)")
    p.add_argument("--max-length", type=positive_int("--max-length"), default=None, help="longest path (default 1.5 L)")
    p.add_argument(
        "--root-block",
        type=bounded_int("--root-block", 1),
        default=4,
        help="most contiguous layers one action skips or repeats at the root (1 below it)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


FIELDS = ("prompt", "answer")


def read_items(path: str) -> list[dict]:
    """The JSONL file's items, each with a non-empty string "prompt" and "answer", or a ValueError naming the line."""
    items = []
    for n, line in enumerate(read_text("--data", path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--data {path!r} line {n} is not JSON ({err})") from None
        fields_ok = isinstance(item, dict) and all(isinstance(item.get(k), str) and item[k] for k in FIELDS)
        if not fields_ok:
            raise ValueError(f'--data {path!r} line {n} must be an object with non-empty strings "prompt" and "answer"')
        items.append(item)
    if not items:
        raise ValueError(f"--data {path!r} holds no items")
    return items


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from ..cola import answer_loglik_reward, answer_match_reward, search_layer_path
    from ..layers.families import get_family
    from ..linearize import load_llama
    from ..linearize.convert import teacher_shape

    if args.gguf_file:
        require_packages("cola-search", {"gguf": "reading --gguf-file"})
    check_output_file("--out", args.out)
    if args.min_length is not None and args.max_length is not None and args.min_length > args.max_length:
        raise ValueError(f"--min-length {args.min_length} is larger than --max-length {args.max_length}")
    items = read_items(args.data)
    gguf_path = check_model_folder("--model", args.model, args.gguf_file)
    teacher = teacher_shape(args.model, gguf_path)
    if teacher["model_type"] is not None:  # an unsupported family, named before anything loads
        get_family(teacher["model_type"], f"--model {args.model!r}")
    progress = not args.no_progress
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = load_llama(args.model, gguf_file=args.gguf_file, dtype=getattr(torch, args.dtype)).eval()
    L = model.config.num_hidden_layers
    for flag, value in (("--min-length", args.min_length), ("--max-length", args.max_length)):
        if value is not None and (value > L if flag == "--min-length" else value < L):
            raise ValueError(f"{flag} {value} must allow the model's own path ({L} layers)")
    make = answer_loglik_reward if args.reward == "loglik" else answer_match_reward
    results, t0 = [], time.time()
    for i, item in enumerate(items):
        found = search_layer_path(
            model,
            make(model, tokenizer, item["prompt"], item["answer"]),
            simulations=args.simulations,
            seed=args.seed,
            min_length=args.min_length,
            max_length=args.max_length,
            root_block=args.root_block,
            progress=progress,
            desc=f"item {i + 1}/{len(items)}",
        )
        results.append(
            {
                "prompt": item["prompt"],
                "answer": item["answer"],
                "base_reward": found.base_reward,
                "path": found.path,
                "reward": found.reward,
                "length": len(found.path),
                "evaluations": found.evaluations,
                "layer_runs": found.layer_runs,
                "seconds": round(found.seconds, 3),
            }
        )
    out = {
        "model": args.gguf_file and os.path.join(args.model, args.gguf_file) or args.model,
        "num_layers": L,
        "reward": args.reward,
        "simulations": args.simulations,
        "seed": args.seed,
        "items": results,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    better = sum(r["reward"] > r["base_reward"] for r in results)
    print(f"{len(results)} items, a better path for {better}, in {time.time() - t0:.0f} s; wrote {args.out}")
    return 0
