"""Where a grid's output folder stands: finished cells, finished units, checkpoints, its writer.

Read-only, from the files alone (:mod:`sap_rl.grid.store`), so it works while a run writes the
folder, after it stopped, or on a copy: which cells are finished, and of each unfinished cell
its units, the finished ones and the checkpoints inside the others, each with the work seconds
it holds and when it was saved. A cell that no unit has reached yet leaves no file, so it is not
listed (the folder does not record the grid a command plays).

Example:
    >>> import tempfile, pathlib
    >>> from sap_rl.grid.store import save_partial, save_unit
    >>> from sap_rl.grid.units import split_cell
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> first, second = split_cell("a", 4, 2)
    >>> save_unit(out, first, [1, 2], {"seed": 0})
    >>> save_partial(out, second, {"step": 7}, {"seed": 0}, 12.5)
    >>> cell = folder_status(out).unfinished[0]
    >>> cell.name, cell.units, cell.finished_units, [(u.index, u.seconds) for u in cell.running]
    ('a', 2, [0], [(1, 12.5)])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sap_rl.errors import UserError
from sap_rl.grid.store import CELLS_DIR, PARTIAL_SUFFIX, RUN_FILE, TIMINGS_FILE, UNITS_SUFFIX
from sap_rl.io import read_json
from sap_rl.lock import current_owner

__all__ = ["CellStatus", "FolderStatus", "UnitCheckpoint", "folder_status"]


@dataclass(frozen=True)
class UnitCheckpoint:
    """The last checkpoint of a unit that is running or was stopped mid-way.

    Attributes:
        index: the unit's index in its cell.
        size: how many items (games, batches) the unit has.
        seconds: work seconds it holds (those of earlier runs included).
        saved: when it was written (seconds since the epoch).
        state: the domain's saved state (for RL, :mod:`sap_rl.rl.unit_resume`).
    """

    index: int
    size: int
    seconds: float
    saved: float
    state: Any


@dataclass
class CellStatus:
    """An unfinished cell: its number of units (``None`` if no unit file says), the finished
    ones, and the checkpoints of the running or stopped ones."""

    name: str
    units: int | None = None
    finished_units: list[int] = field(default_factory=list)
    running: list[UnitCheckpoint] = field(default_factory=list)


@dataclass
class FolderStatus:
    """A grid folder: its settings (``run.json``), finished and unfinished cells, the work
    seconds of ``timings.json`` per cell, and the lock owner of the run that writes it now."""

    folder: Path
    fingerprint: dict[str, Any]
    finished: list[str]
    unfinished: list[CellStatus]
    seconds: dict[str, float]
    owner: dict[str, Any] | None


def folder_status(out: str | Path) -> FolderStatus:
    """Read where the grid folder ``out`` stands (module docs); damaged files are skipped.

    Raises:
        UserError: ``out`` is not a folder, or holds no cells of a grid yet.
    """
    out = Path(out)
    cells_dir = out / CELLS_DIR
    if not out.is_dir():
        what = "not a folder" if out.exists() else "no such folder"
        raise UserError(f"{out}: {what}; give the --out folder of an evaluation")
    if not cells_dir.is_dir():
        raise UserError(f"{out}: no {CELLS_DIR}/ folder, so no evaluation has written here yet; "
                        "give the --out folder of an evaluation")  # fmt: skip
    finished, unfinished = [], []
    for path in sorted(cells_dir.iterdir()):
        if path.is_dir() and path.name.endswith(UNITS_SUFFIX):
            unfinished.append(_cell_status(path, path.name.removesuffix(UNITS_SUFFIX)))
        elif path.is_file() and not path.name.startswith("."):
            finished.append(path.name.rsplit(".", 1)[0])
    # A unit folder outlives its cell's file for a moment (the file is written first).
    unfinished = [c for c in unfinished if c.name not in finished]
    return FolderStatus(out, _dict(_read(out / RUN_FILE)).get("fingerprint") or {}, finished,
                        unfinished, _seconds(out), current_owner(out))  # fmt: skip


def _cell_status(units_dir: Path, name: str) -> CellStatus:
    cell = CellStatus(name)
    for path in sorted(units_dir.glob("*.json")):
        try:
            saved = path.stat().st_mtime
        except OSError:
            continue  # removed meanwhile: its unit or cell is done
        data = _dict(_read(path))
        unit = data.get("unit")
        if not (isinstance(unit, list) and len(unit) == 4
                and all(isinstance(x, int) for x in unit)):  # fmt: skip
            continue  # damaged, or not a unit file
        index, count, start, stop = unit
        cell.units = count
        if path.name.endswith(PARTIAL_SUFFIX):
            seconds = data.get("seconds")
            if isinstance(seconds, int | float) and "state" in data:
                cell.running.append(UnitCheckpoint(index, stop - start, float(seconds), saved,
                                                   data["state"]))  # fmt: skip
        elif "result" in data:
            cell.finished_units.append(index)
    cell.finished_units.sort()
    cell.running.sort(key=lambda u: u.index)
    # A finished unit's checkpoint is removed just after its unit file is written.
    cell.running = [u for u in cell.running if u.index not in cell.finished_units]
    return cell


def _read(path: Path) -> Any:
    with contextlib.suppress(UserError, OSError):
        return read_json(path)
    return None


def _dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {}


def _seconds(out: Path) -> dict[str, float]:
    cells = _dict(_dict(_read(out / TIMINGS_FILE)).get("cells"))
    return {k: float(v) for k, v in cells.items() if isinstance(v, int | float)}
