"""Units of work: the pieces of a grid's cells that executors run, and their stable seeds.

A grid is a list of named cells (an RL cell is ``(defense, attack, eps)``: whole games; a vision
cell the same over test images). A cell is split into one or more :class:`Unit` s by its domain;
the split and each unit's seed depend only on the settings, never on the backend, the number of
workers or the order units run in, so a unit's result is the same wherever it runs.

Example:
    >>> [(u.cell, u.index, u.start, u.stop) for u in split_cell("dense__clean", 5, 2)]
    [('dense__clean', 0, 0, 2), ('dense__clean', 1, 2, 4), ('dense__clean', 2, 4, 5)]
    >>> stable_seed(0, "dense", None, 0.0) == stable_seed(0, "dense", None, 0.0)
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

__all__ = ["Unit", "split_cell", "stable_seed"]


@dataclass(frozen=True)
class Unit:
    """Items ``start .. stop-1`` (games, batches) of one cell: what one worker runs at a time.

    Attributes:
        cell: the cell's name (its file name under ``cells/``).
        index: position of the unit in its cell (0-based).
        count: units in the cell.
        start: first item of the cell this unit covers.
        stop: one past its last item.
    """

    cell: str
    index: int
    count: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Items in the unit (the progress bar's steps)."""
        return self.stop - self.start

    @property
    def key(self) -> str:
        """A name unique in the grid, e.g. ``dense__clean#1``."""
        return f"{self.cell}#{self.index}"


def split_cell(cell: str, items: int, per_unit: int) -> list[Unit]:
    """Split ``items`` items of ``cell`` into consecutive units of at most ``per_unit`` items.

    Example:
        >>> [u.size for u in split_cell("c", 4, 10)]
        [4]
    """
    if items < 1 or per_unit < 1:
        raise ValueError(f"items and per_unit must be >= 1, got {items} and {per_unit}")
    starts = range(0, items, per_unit)
    return [
        Unit(cell, i, len(starts), start, min(start + per_unit, items))
        for i, start in enumerate(starts)
    ]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from JSON-able ``parts``, the same on every run, machine and worker.

    Example:
        >>> stable_seed(0, "sap-100", "fgsm", 1.0) != stable_seed(1, "sap-100", "fgsm", 1.0)
        True
    """
    text = json.dumps(list(parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
