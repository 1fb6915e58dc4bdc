"""Argument checks shared by the layers and the configs built on them, one function per kind of value.

A wrong type raises TypeError, a wrong value ValueError; the message names where (``where``: a class or function),
the field, what is expected and what was given.
"""

from __future__ import annotations

import numbers


def _name(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_int(where: str, name: str, value, minimum: int = 1, allow_none: bool = False) -> None:
    """``value`` is an int ``>= minimum`` (bools are not ints here); None passes when ``allow_none``."""
    if value is None and allow_none:
        return
    what = f"an int >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_name(where, name)} must be {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{_name(where, name)} must be {what}, got {value!r}")


def check_number(
    where: str,
    name: str,
    value,
    positive: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
) -> None:
    """``value`` is a real number (not a bool), ``> 0`` when ``positive``, within ``[minimum, maximum]`` if given."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{_name(where, name)} must be a number"
            + (" or None" if allow_none else "")
            + f", got {type(value).__name__} {value!r}"
        )
    if positive and not value > 0:
        raise ValueError(f"{_name(where, name)} must be a number > 0, got {value!r}")
    if (minimum is not None and not value >= minimum) or (maximum is not None and not value <= maximum):
        raise ValueError(f"{_name(where, name)} must be in [{minimum}, {maximum}], got {value!r}")


def check_choice(where: str, name: str, value, choices) -> None:
    """``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str):
        raise TypeError(
            f"{_name(where, name)} must be a str, one of {tuple(choices)}, got {type(value).__name__} {value!r}"
        )
    if value not in choices:
        raise ValueError(f"{_name(where, name)} must be one of {tuple(choices)}, got {value!r}")


def check_bool(where: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{_name(where, name)} must be a bool, got {type(value).__name__} {value!r}")
