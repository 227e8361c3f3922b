"""Argument types shared by the ``sap-rl`` sub-commands (``type=`` of ``add_argument``).

A bad value is an ``argparse.ArgumentTypeError``, which the parser turns into its one-line usage
error with exit code 2. Only the standard library is imported, so ``sap-rl --help`` stays fast.

Example:
    >>> non_negative_int("0"), positive_int("1_000"), positive_float("2.5")
    (0, 1000, 2.5)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _checked(
    text: str, convert: Callable[[str], T], valid: Callable[[T], bool], expected: str
) -> T:
    """``convert(text)`` if it converts and is ``valid``; else argparse's error."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1; ``_`` separators are allowed (``100_000``)."""
    return _checked(text, lambda t: int(t.replace("_", "")), lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds: numpy and torch refuse negative ones deep inside a run)."""
    return _checked(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _checked(text, float, lambda v: v > 0 and math.isfinite(v), "a positive number")
