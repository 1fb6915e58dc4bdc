"""The ``hf-seqmodels`` command. Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = [
    "hf_seqmodels.demo",  # demo
    "hf_seqmodels.bench",  # bench
    "hf_seqmodels.evaluation.cli",  # eval mqar | eval ppl
    "hf_seqmodels.linearize.cli",  # linearize
    "hf_seqmodels.hnet_cli",  # hnet-chunks
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-seqmodels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input (our convention): the message, not a traceback
        if os.environ.get("HF_SEQMODELS_DEBUG") == "1":
            raise
        parser.exit(2, f"hf-seqmodels {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
