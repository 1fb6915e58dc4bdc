"""``hf-seqmodels hnet-chunks``: show how a saved H-Net chunks a text, one row per stage (PNG, HTML and text).

The drawing and the per-stage chunks are ``hf_seqmodels.models.hnet.chunks``; this module parses, checks and prints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..models.hnet.chunks import chunk_text, describe_stage, format_chunks, write_html, write_png
from .args import HelpFormatter, check_output_file, device, positive_int, read_text, require_packages


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "hnet-chunks",
        help="picture of how a saved H-Net chunks a text, per stage",
        formatter_class=HelpFormatter,
        description="Run a text through a saved H-Net and draw its characters coloured by chunk, one row per stage "
        "(stage 0: chunks of bytes; stage 1: chunks of stage-0 chunks, mapped back onto the bytes). "
        "Also prints the chunks as text and the boundary fraction per stage.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a saved H-Net folder (tokenizer from the same folder if present, else ByteTokenizer())",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to chunk")
    src.add_argument("--text-file", help="a UTF-8 file holding the text to chunk")
    p.add_argument("--out", default="chunks.png", help="PNG to write ('' for none)")
    p.add_argument("--html", default=None, help="also write an HTML page with coloured spans")
    p.add_argument("--width", type=positive_int("--width"), default=80, help="characters per line in the PNG")
    p.add_argument("--device", type=device("--device"), default="cpu", help="torch device (cpu, cuda, ...)")
    p.set_defaults(func=run_chunks)
    return p


def load_model_and_tokenizer(model_dir: str, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_seqmodels  # noqa: F401  (registers the architectures and the byte tokenizer)
    from hf_seqmodels import ByteTokenizer

    folder = Path(model_dir)
    if not folder.is_dir():
        raise ValueError(f"--model must be a saved H-Net folder, got {model_dir!r} (not a directory)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {model_dir!r} holds no config.json: not a saved model folder")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if not hasattr(model.config, "arch_layout") or not hasattr(model.config, "compression_ratio"):
        raise ValueError(f"--model {model_dir!r} is a {type(model).__name__}, not an H-Net: it has no chunk boundaries")
    tokenizer = (
        AutoTokenizer.from_pretrained(model_dir) if (folder / "tokenizer_config.json").is_file() else ByteTokenizer()
    )
    return model, tokenizer


def run_chunks(args: argparse.Namespace) -> int:
    if args.text_file is not None:
        if not Path(args.text_file).is_file():
            raise ValueError(f"--text-file must be a file, got {args.text_file!r}")
        text = read_text("--text-file", args.text_file)
    else:
        text = args.text
    if not text:
        raise ValueError("--text is empty: give some text to chunk")
    if args.out:
        require_packages("hnet-chunks", {"matplotlib": "the PNG of --out (or pass --out '' for none)"})
    for flag, path in (("--out", args.out), ("--html", args.html)):
        if path:
            check_output_file(flag, path)  # before the model runs
    model, tokenizer = load_model_and_tokenizer(args.model, args.device)
    chars, stages, n_bytes = chunk_text(model, tokenizer, text, args.device)
    title = f"H-Net chunks: {os.path.basename(os.path.normpath(args.model))} ({len(stages)} stage(s))"
    for stage in stages:
        print(describe_stage(stage, n_bytes))
        print(format_chunks(chars, stage))
        moved = sum(stage.straddled)
        if moved:
            print(
                f"  ({moved} boundar{'y' if moved == 1 else 'ies'} fell inside a multi-byte character; "
                "shown at the character's first byte)"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_png(args.out, chars, stages, n_bytes, title, args.width)
        print(f"wrote {args.out}")
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        write_html(args.html, chars, stages, n_bytes, title)
        print(f"wrote {args.html}")
    return 0
