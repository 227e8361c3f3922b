"""``sap-rl evaluate`` (placeholder until the evaluator issue lands)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` sub-command to ``subparsers``."""
    del subparsers
