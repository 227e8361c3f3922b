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


def positive_int(text: str) -> int:
    """An integer >= 1; ``_`` separators are allowed (``100_000``)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds: numpy and torch refuse negative ones deep inside a run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
