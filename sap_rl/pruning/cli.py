"""Command-line flags and the resume and time-limit handling shared by ``sap-rl vision prune``
and ``sap-rl prune`` (no torch import).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_harp_arguments(parser)
    >>> harp_overrides(parser.parse_args(["--sparsity", "0.99", "--objective", "trades"]))
    {'sparsity': 0.99, 'objective': 'trades'}
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sap_rl.cli_args import non_negative_int, positive_float, positive_int
from sap_rl.errors import UserError

__all__ = [
    "CHECKPOINT_DIR",
    "add_harp_arguments",
    "add_resume_arguments",
    "check_resume",
    "harp_overrides",
    "run_stoppable",
    "sparsity_arg",
    "stopped_message",
    "time_limit",
]

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


# ----------------------------------------------------------------------------- resume, time limit

#: Subfolder of ``--out`` holding a HARP run's checkpoint (:mod:`sap_rl.pruning.checkpoint`).
CHECKPOINT_DIR = "checkpoint"


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--resume`` and ``--time-limit MINUTES`` (both prune commands)."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (after its last finished epoch); "
        "pass the same settings as the interrupted run",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        metavar="MINUTES",
        help="stop after the epoch in progress once MINUTES of wall-clock time have passed "
        "(the checkpoint keeps the finished epochs); --resume continues it",
    )


def check_resume(out: Path, resume: bool) -> int:
    """Epochs the checkpoint in ``out`` has finished (0 for a new run), as ``--resume`` allows.

    Call it under the output folder's lock, before the first write.

    Raises:
        UserError: ``out`` holds a checkpoint but ``resume`` is false (nothing is overwritten),
            ``resume`` without a checkpoint, or a damaged ``state.json``.

    Example:
        >>> check_resume(Path("/nonexistent/run"), resume=False)
        0
    """
    from sap_rl.pruning.checkpoint import saved_epochs

    folder = out / CHECKPOINT_DIR
    done = saved_epochs(folder)
    if done is not None and not resume:
        raise UserError(
            f"{out} holds the checkpoint of an unfinished run (after epoch {done}); pass --resume "
            "to continue it, or choose another --out"
        )
    if resume and done is None:
        raise UserError(f"--resume: no checkpoint in {folder} (a finished run removes it)")
    return done or 0


def time_limit(minutes: float | None) -> Callable[[], bool] | None:
    """``stop()`` for :func:`~sap_rl.pruning.harp.harp_prune`: true once ``minutes`` have passed.

    Example:
        >>> time_limit(None) is None, time_limit(60.0)()
        (True, False)
    """
    if not minutes:
        return None
    deadline = time.monotonic() + 60.0 * minutes
    return lambda: time.monotonic() >= deadline


def stopped_message(out: Path, epochs_done: int, epochs: int, reason: str) -> str:
    """The line a stopped prune command prints: where it stopped and how to continue.

    Example:
        >>> stopped_message(Path("runs/p"), 3, 20, "time limit reached")
        'runs/p: time limit reached after epoch 3 of 20; the checkpoint in runs/p/checkpoint keeps it: rerun the same command with --resume to continue'
    """  # noqa: E501
    return (
        f"{out}: {reason} after epoch {epochs_done} of {epochs}; the checkpoint in "
        f"{out / CHECKPOINT_DIR} keeps it: rerun the same command with --resume to continue"
    )


T = TypeVar("T")


def run_stoppable(out: Path, run: Callable[[], T]) -> T:
    """``run()``; on Ctrl-C or SIGTERM first say on stderr what the checkpoint kept, then re-raise.

    Example:
        >>> run_stoppable(Path("runs/p"), lambda: 3)
        3
    """
    try:
        return run()
    except KeyboardInterrupt:
        from sap_rl.pruning.checkpoint import saved_epochs

        try:
            done = saved_epochs(out / CHECKPOINT_DIR)
        except UserError:
            done = None
        if done:
            print(stopped_message(out, done, _total(out), "interrupted"), file=sys.stderr)
        raise


def _total(out: Path) -> int:
    """Epochs of the run whose checkpoint is in ``out`` (from its saved settings)."""
    import json

    try:
        state = json.loads((out / CHECKPOINT_DIR / "state.json").read_text(encoding="utf-8"))
        harp = state["settings"]["harp"]
        return int(harp["prune_epochs"]) + int(harp["finetune_epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
