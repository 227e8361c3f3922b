"""``sap-rl train`` and ``sap-rl agents``; ``evaluate`` lives in :mod:`sap_rl.rl.evaluate_command`."""

from __future__ import annotations

from typing import Any

from sap_rl.rl import evaluate_command


def register(subparsers: Any) -> None:
    """Add the RL sub-commands to ``subparsers``."""
    evaluate_command.register(subparsers)
