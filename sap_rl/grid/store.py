"""The output folder of a grid: its fingerprint, one file per finished cell, unit files, timings.

Layout of ``out``::

    run.json                   {"fingerprint": ...}: the settings every cell was made with
    cells/<cell><suffix>       a finished cell, written by its domain (atomically)
    cells/<cell>.units/<i>.json  a finished unit of an unfinished cell (JSON, atomic)
    cells/<cell>.units/<i>.partial.json  a checkpoint inside a running unit (local workers)
    timings.json               wall seconds per cell and unit (not results: they vary per run)

A unit file is removed once its cell's file is written, so a killed run loses at most the units
in flight, and a rerun of the same command resumes from the files. A domain whose units are long
may also checkpoint inside a unit (:func:`save_partial`): a killed unit then continues from its
last checkpoint (the domain guarantees the same result as an uninterrupted run). Cell files hold
results only, never timings, so they are byte-identical whatever the backend, the worker count
and the order.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> check_run_file(out, {"seed": 0}, command="sap-rl evaluate")
    >>> write_run_file(out, {"seed": 0})
    >>> check_run_file(out, {"seed": 1}, command="sap-rl evaluate")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sap_rl.errors.UserError: ... holds results of a different evaluation (seed: 0 -> 1); ...
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from sap_rl.errors import UserError
from sap_rl.grid.units import Unit, split_cell  # noqa: F401  (split_cell: the example)
from sap_rl.io import atomic_write_json, read_json

__all__ = [
    "CELLS_DIR",
    "PARTIAL_SUFFIX",
    "RUN_FILE",
    "TIMINGS_FILE",
    "UNITS_SUFFIX",
    "cell_path",
    "check_run_file",
    "clear_units",
    "load_partial",
    "load_units",
    "record_time",
    "remove_partial",
    "save_partial",
    "save_unit",
    "write_run_file",
]

CELLS_DIR = "cells"
RUN_FILE = "run.json"
TIMINGS_FILE = "timings.json"
UNITS_SUFFIX = ".units"  # cells/<cell>.units/: the unit files of an unfinished cell
PARTIAL_SUFFIX = ".partial.json"  # <i>.partial.json: a checkpoint inside unit i


def check_run_file(out: Path, fingerprint: dict[str, Any], *, command: str) -> None:
    """Refuse ``out`` if its ``run.json`` says it holds results of other settings.

    Raises:
        UserError: ``run.json`` is not a run file, or one of its settings differs.
    """
    run_file = out / RUN_FILE
    if run_file.is_file():
        data = read_json(run_file)
        previous = data.get("fingerprint", {}) if isinstance(data, dict) else None
        if not isinstance(previous, dict):
            raise UserError(
                f"{run_file}: not a run file of {command} (expected a JSON object with a "
                "fingerprint); use another --out or delete that folder"
            )
        changed = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in fingerprint.items()
                   if previous.get(k) != v]  # fmt: skip
        if changed:
            raise UserError(
                f"{out} holds results of a different evaluation ({'; '.join(changed)}); "
                "use another --out or delete that folder"
            )


def write_run_file(out: Path, fingerprint: dict[str, Any]) -> None:
    """Record the settings of ``out``'s results (after its cells were checked against them)."""
    atomic_write_json(out / RUN_FILE, {"fingerprint": fingerprint})


def cell_path(out: Path, cell: str, suffix: str = ".json") -> Path:
    """Where the finished ``cell`` lives, e.g. ``out/cells/dense__clean.json``."""
    return out / CELLS_DIR / f"{cell}{suffix}"


def _units_dir(out: Path, cell: str) -> Path:
    return out / CELLS_DIR / f"{cell}{UNITS_SUFFIX}"


def save_unit(out: Path, unit: Unit, result: Any, fingerprint: Any) -> None:
    """Keep a finished unit of an unfinished cell (``result`` JSON-able) until its cell is done."""
    _write_unit_file(_units_dir(out, unit.cell) / f"{unit.index}.json", unit, fingerprint,
                     {"result": result})  # fmt: skip


def load_units(out: Path, units: list[Unit], fingerprint: Any) -> dict[int, Any]:
    """The results of ``units`` (one cell's) already on disk, by unit index.

    A unit file of other settings or another split is ignored (its unit is run again).
    """
    found: dict[int, Any] = {}
    for unit in units:
        data = _read_unit_file(_units_dir(out, unit.cell) / f"{unit.index}.json", unit,
                               fingerprint)  # fmt: skip
        if data is not None and "result" in data:
            found[unit.index] = data["result"]
    return found


def _partial_path(out: Path, unit: Unit) -> Path:
    return _units_dir(out, unit.cell) / f"{unit.index}{PARTIAL_SUFFIX}"


def save_partial(out: Path, unit: Unit, state: Any, fingerprint: Any, seconds: float) -> None:
    """Keep the state of a running unit (JSON-able) and the work seconds it holds.

    Example:
        >>> import tempfile, pathlib
        >>> out, unit = pathlib.Path(tempfile.mkdtemp()), split_cell("c", 4, 2)[1]
        >>> save_partial(out, unit, {"step": 7}, {"seed": 0}, 12.5)
        >>> load_partial(out, unit, {"seed": 0}), load_partial(out, unit, {"seed": 1})
        (({'step': 7}, 12.5), None)
    """
    _write_unit_file(_partial_path(out, unit), unit, fingerprint,
                     {"seconds": round(seconds, 3), "state": state})  # fmt: skip


def load_partial(out: Path, unit: Unit, fingerprint: Any) -> tuple[Any, float] | None:
    """The state and work seconds of ``unit``'s checkpoint, ``None`` if there is none of these
    settings (a checkpoint of other settings or another split is ignored)."""
    data = _read_unit_file(_partial_path(out, unit), unit, fingerprint)
    if data is None or "state" not in data or not isinstance(data.get("seconds"), int | float):
        return None
    return data["state"], float(data["seconds"])


def _write_unit_file(path: Path, unit: Unit, fingerprint: Any, payload: dict[str, Any]) -> None:
    """A unit's file: which unit of which split, the settings, then ``payload`` (atomic JSON)."""
    atomic_write_json(path, {"unit": [unit.index, unit.count, unit.start, unit.stop],
                             "fingerprint": fingerprint, **payload})  # fmt: skip


def _read_unit_file(path: Path, unit: Unit, fingerprint: Any) -> dict[str, Any] | None:
    """The contents of :func:`_write_unit_file`'s file if it is one of ``unit`` made with
    ``fingerprint``; ``None`` if missing, unreadable or of other settings or another split."""
    if not path.is_file():
        return None
    with contextlib.suppress(UserError):
        data = read_json(path)
        expected = [unit.index, unit.count, unit.start, unit.stop]
        if (isinstance(data, dict) and data.get("unit") == expected
                and data.get("fingerprint") == fingerprint):  # fmt: skip
            return data
    return None


def remove_partial(out: Path, unit: Unit) -> None:
    """Remove ``unit``'s checkpoint (once its result is kept)."""
    _partial_path(out, unit).unlink(missing_ok=True)


def clear_units(out: Path, cell: str) -> None:
    """Remove the unit files of ``cell`` (once its cell file is written)."""
    shutil.rmtree(_units_dir(out, cell), ignore_errors=True)


def record_time(out: Path, cell: str, seconds: float) -> None:
    """Add ``seconds`` of work to ``cell``'s entry in ``timings.json`` (summed over its units)."""
    path = out / TIMINGS_FILE
    data: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(UserError):
            loaded = read_json(path)
            data = loaded if isinstance(loaded, dict) else {}
    cells = data.setdefault("cells", {})
    cells[cell] = round(float(cells.get(cell, 0.0)) + seconds, 3)
    atomic_write_json(path, data)
