"""``hf-seqmodels convert SRC DST``: a published checkpoint (fla GLA, Liger-GLA) -> an hf-seqmodels folder."""

from __future__ import annotations

import argparse

from .args import HelpFormatter


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert a published checkpoint (fla GLA, Liger-GLA) into an hf-seqmodels model folder",
        formatter_class=HelpFormatter,
        description="Convert a published checkpoint folder (config.json + safetensors weights) into an\n"
        "hf-seqmodels folder that AutoModelForCausalLM and pipeline('text-generation') load after\n"
        "`import hf_seqmodels`.\n"
        "Formats: fla GLA (model_type 'gla': fla-hub/gla-340M-15B, gla-1.3B-100B, gla-2.7B-100B,\n"
        "gla-7B) and Liger-GLA (model_type 'liger_gla': linear-moe-hub/Liger-GLA-8B). Weights are read\n"
        "from safetensors only (a folder with only pytorch_model.bin is refused); options hf-seqmodels\n"
        "does not implement are refused by name. The tokenizer files of SRC are copied.\n\n"
        "  hf-seqmodels convert ./gla-340M-15B ./gla-340M-hf",
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="the published checkpoint folder (config.json, *.safetensors, and tokenizer files, which are copied)",
    )
    p.add_argument(
        "dst",
        metavar="DST",
        help="the folder to write; must not exist or be empty (see --overwrite), and must not be or overlap SRC",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty DST (only once the new folder is complete)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..conversion import convert

    convert(args.src, args.dst, overwrite=args.overwrite, progress=not args.no_progress)
    return 0
