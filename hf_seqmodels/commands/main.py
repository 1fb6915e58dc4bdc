"""The ``hf-seqmodels`` command's parser: each command is a module of ``hf_seqmodels.commands`` exposing
``add_parser(subparsers)``, listed in ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .args import HelpFormatter

DESCRIPTION = """Train a demo, benchmark the kernels, evaluate, linearize a Llama, show H-Net chunks, convert published
checkpoints, search CoLa layer paths.

Run `hf-seqmodels COMMAND --help` for a command's flags and their defaults. HF_SEQMODELS_DEBUG=1 shows the traceback
of an input error."""

COMMAND_MODULES = [
    "hf_seqmodels.commands.demo",  # demo
    "hf_seqmodels.commands.bench",  # bench
    "hf_seqmodels.commands.eval",  # eval mqar | eval state-tracking | eval ppl
    "hf_seqmodels.commands.linearize",  # linearize
    "hf_seqmodels.commands.hnet_chunks",  # hnet-chunks
    "hf_seqmodels.commands.convert",  # convert
    "hf_seqmodels.commands.cola_search",  # cola-search
]


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("hf-seqmodels")
    except Exception:  # noqa: BLE001  (not installed: a source checkout)
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-seqmodels", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for choice in sub.choices.values():  # every subcommand (and sub-subcommand) lists its defaults
        _use_formatter(choice)
    return parser


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    if parser.formatter_class in (
        argparse.HelpFormatter,
        argparse.RawDescriptionHelpFormatter,
        argparse.ArgumentDefaultsHelpFormatter,
    ):
        parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _use_formatter(child)


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command that ran (its usage line goes with the error)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _subparser(action.choices[name], args)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from ..compat import transformers_progress_bars  # transformers' own bars follow --no-progress

        with transformers_progress_bars(not getattr(args, "no_progress", False)):
            return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input (our convention): the message, not a traceback
        if os.environ.get("HF_SEQMODELS_DEBUG") == "1":
            raise
        if (
            isinstance(err, OSError)
            and not isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))
            and err.errno is not None
        ):
            raise  # a real I/O failure (disk full...): keep the traceback
        _subparser(parser, args).error(str(err))  # usage, "hf-seqmodels CMD: error: ...", exit status 2


if __name__ == "__main__":
    sys.exit(main())
