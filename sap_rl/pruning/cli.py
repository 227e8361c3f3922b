"""Command-line flags shared by ``sap-rl vision prune`` and ``sap-rl prune`` (no torch import).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_harp_arguments(parser)
    >>> harp_overrides(parser.parse_args(["--sparsity", "0.99", "--objective", "trades"]))
    {'sparsity': 0.99, 'objective': 'trades'}
"""

from __future__ import annotations

import argparse
from typing import Any

from sap_rl.cli_args import non_negative_int, positive_int

__all__ = ["add_harp_arguments", "harp_overrides", "sparsity_arg"]

_OBJECTIVES = ("pgd", "trades", "mart")
_STRATEGIES = ("uniform", "lamp", "erk")


def sparsity_arg(text: str) -> float:
    """An argparse type: a share of weights to remove, strictly between 0 and 1.

    Example:
        >>> sparsity_arg("0.9")
        0.9
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in (0, 1), got {text}")
    return value


def _patterns(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_harp_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add ``--sparsity``, ``--objective``, ``--strategy``, ``--hardware``, epochs and friends."""
    parser.add_argument(
        "--sparsity",
        type=sparsity_arg,
        required=required,
        help="share of the prunable weights (or FLOPs) to remove, e.g. 0.99",
    )
    parser.add_argument(
        "--objective",
        choices=_OBJECTIVES,
        help="adversarial objective: pgd (PGD-AT), trades or mart",
    )
    parser.add_argument(
        "--strategy", choices=_STRATEGIES, help="initial per-layer rates: uniform, lamp or erk"
    )
    parser.add_argument(
        "--hardware",
        choices=("params", "flops"),
        help="the target constrains kept parameters or FLOPs",
    )
    parser.add_argument(
        "--prune-epochs", type=non_negative_int, help="epochs learning scores and rates"
    )
    parser.add_argument(
        "--finetune-epochs", type=non_negative_int, help="epochs fine-tuning the kept weights"
    )
    parser.add_argument("--steps", type=positive_int, help="PGD steps of the objective")
    parser.add_argument(
        "--exclude",
        type=_patterns,
        metavar="PATTERNS",
        help="comma-separated glob patterns of layer names to keep dense",
    )
    parser.add_argument("--seed", type=non_negative_int, help="seed of the attacks and shuffling")


_FLAGS = ("sparsity", "objective", "strategy", "hardware", "prune_epochs", "finetune_epochs",
          "steps", "exclude", "seed")  # fmt: skip


def harp_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The HARP settings given on the command line (flags left out are not in the dict)."""
    return {flag: getattr(args, flag) for flag in _FLAGS if getattr(args, flag, None) is not None}
