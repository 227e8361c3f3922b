"""``sap-rl vision ...`` sub-commands (placeholder until the vision issue lands)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``vision`` sub-command group to ``subparsers``."""
    del subparsers
