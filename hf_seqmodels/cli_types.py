"""argparse types shared by the subcommands: the error names the flag and what was expected."""
from __future__ import annotations

import argparse


def positive_int(flag: str):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
        return value
    return parse


def positive_list(kind, flag: str):
    """A comma-separated list of positive ``kind`` values (int or float)."""
    def parse(text):
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a comma-separated list of {kind.__name__}, "
                                             f"got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} must hold positive values, got {text!r}")
        return values
    return parse
