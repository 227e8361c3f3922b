"""Run a grid: skip finished cells, run the rest unit by unit, write each cell as it completes.

The engine knows no domain. A domain (RL games, vision batches) gives it

- the cells, by name, and each cell's units (:func:`sap_rl.grid.units.split_cell`);
- a :class:`CellFiles`: how to read a finished cell back and how to write one from its units'
  results (atomically, results only);
- a :class:`~sap_rl.grid.executors.Work`: how a worker builds the runner that runs a unit.

:func:`run_grid` then reads the finished cells (a rerun of the same command resumes), restores
the finished units of unfinished cells (``cells/<cell>.units/``), runs the rest on an executor,
keeps each finished unit of a multi-unit cell in a unit file as it arrives, and writes a cell's
file when its last unit arrives. A unit that continues from a checkpoint of its runner
(:func:`sap_rl.grid.store.save_partial`) is timed with the seconds the checkpoint holds.
Progress shows as a bar on a terminal.

Example:
    >>> import tempfile, pathlib
    >>> from sap_rl.grid.executors import LocalExecutor, Work, _Echo
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> files = JsonCells(out, fingerprint={"seed": 0})
    >>> run = run_grid({"a": split_cell("a", 3, 2)}, files, Work(_Echo, ()), LocalExecutor(1),
    ...                progress=False)
    >>> run.done, run.played
    ({'a': [0, 2]}, ['a'])
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sap_rl.errors import UserError
from sap_rl.grid.executors import Executor, Work
from sap_rl.grid.store import (
    cell_path,
    clear_units,
    load_partial,
    load_units,
    record_time,
    remove_partial,
    save_unit,
)
from sap_rl.grid.units import Unit, split_cell  # noqa: F401  (split_cell: the example)
from sap_rl.io import atomic_write_json, read_json

__all__ = ["CellFiles", "GridRun", "JsonCells", "progress_bar", "run_grid", "versions"]

logger = logging.getLogger(__name__)


class CellFiles(Protocol):
    """How a domain keeps its finished cells in the output folder."""

    out: Path
    fingerprint: Any  # JSON-able: the settings units are made with (stamped in unit files)

    def load(self, cell: str) -> Any | None:
        """The finished cell's value, ``None`` if it is still to be run (raise if it conflicts)."""
        ...

    def save(self, cell: str, results: list[Any]) -> Any:
        """Write the cell from its units' results (in unit order); return the cell's value."""
        ...


class JsonCells:
    """Cells as ``cells/<cell>.json``: ``{"fingerprint": ..., "results": [unit results]}``.

    The simplest :class:`CellFiles` (tests, examples); a domain usually writes its own format.
    """

    def __init__(self, out: Path, fingerprint: Any) -> None:
        self.out, self.fingerprint = out, fingerprint

    def load(self, cell: str) -> Any | None:
        path = cell_path(self.out, cell)
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            raise UserError(f"{path} was made with other settings; delete it")
        return data["results"]

    def save(self, cell: str, results: list[Any]) -> Any:
        atomic_write_json(cell_path(self.out, cell),
                          {"fingerprint": self.fingerprint, "results": results})  # fmt: skip
        return results


@dataclass
class GridRun:
    """What :func:`run_grid` did: the finished cells' values and which were run or reused.

    Attributes:
        done: every finished cell's value (reused or run now), by name, in grid order.
        reused: cells found finished in the output folder.
        played: cells finished by this run.
        missing: cells still unfinished (a ``may_start`` limit stopped the run).
        seconds: wall seconds of each cell finished by this run (summed over its units).
    """

    done: dict[str, Any]
    reused: list[str]
    played: list[str]
    missing: list[str]
    seconds: dict[str, float] = field(default_factory=dict)


def run_grid(
    cells: Mapping[str, Sequence[Unit]],
    files: CellFiles,
    work: Work,
    executor: Executor,
    *,
    may_start: Callable[[], bool] = lambda: True,
    on_cell: Callable[[str, Any, float], None] | None = None,
    progress: bool = True,
    unit_name: str = "game",
) -> GridRun:
    """Run every unfinished cell of ``cells`` (name -> its units) and write it (module docs).

    Args:
        cells: the grid, in the order cells should start.
        files: reads and writes the domain's cell files.
        work: how workers build their runner.
        executor: where units run (already entered: its runtime is up).
        may_start: asked before each unit starts; once it says no, no further unit starts.
        on_cell: called with ``(cell, value, seconds)`` as each cell is written.
        progress: show a bar over items (games, batches) on a terminal.
        unit_name: what an item is called on the bar.
    """
    out = files.out
    done: dict[str, Any] = {}
    reused: list[str] = []
    for cell in cells:
        value = files.load(cell)
        if value is not None:
            done[cell] = value
            reused.append(cell)
    partial: dict[str, dict[int, Any]] = {}
    todo: list[Unit] = []
    for cell, units in cells.items():
        if cell in done:
            continue
        partial[cell] = load_units(out, list(units), files.fingerprint)
        todo.extend(u for u in units if u.index not in partial[cell])
    # Work seconds already spent on units that continue from a checkpoint (store.save_partial).
    earlier = {u.key: kept[1] for u in todo if (kept := load_partial(out, u, files.fingerprint))}
    total = sum(u.size for units in cells.values() for u in units)
    finished = total - sum(u.size for u in todo)
    seconds: dict[str, float] = {}
    played: list[str] = []
    credited: dict[str, int] = {}  # items reported per running unit (a bar credit)

    def finish(cell: str) -> None:
        results = [partial[cell][i] for i in range(len(cells[cell]))]
        value = files.save(cell, results)
        clear_units(out, cell)
        done[cell] = value
        played.append(cell)
        if on_cell is not None:
            on_cell(cell, value, seconds.get(cell, 0.0))

    # Cells whose units all finished in an interrupted run only need their file.
    for cell in [c for c, units in partial.items() if len(units) == len(cells[c])]:
        finish(cell)
    bar = progress_bar(total, finished, progress, unit_name)
    with bar, logging_beside(bar):

        def on_report(unit: Unit, items: int) -> None:
            credited[unit.key] = credited.get(unit.key, 0) + items
            bar.update(items)

        for unit, result, unit_seconds in executor.run(
            work, todo, may_start=may_start, on_report=on_report
        ):
            bar.update(max(0, unit.size - credited.pop(unit.key, 0)))
            unit_seconds += earlier.pop(unit.key, 0.0)
            seconds[unit.cell] = seconds.get(unit.cell, 0.0) + unit_seconds
            record_time(out, unit.cell, unit_seconds)
            partial[unit.cell][unit.index] = result
            if len(partial[unit.cell]) == unit.count:
                finish(unit.cell)
            else:
                save_unit(out, unit, result, files.fingerprint)
                remove_partial(out, unit)
    order = list(cells)
    return GridRun(
        done={c: done[c] for c in order if c in done},
        reused=reused,
        played=played,
        missing=[c for c in order if c not in done],
        seconds=seconds,
    )


def progress_bar(total: int, initial: int, enabled: bool, unit: str = "game") -> Any:
    """A tqdm bar on stderr if ``enabled`` and stderr is a terminal (else a silent one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                disable=not enabled or not sys.stderr.isatty())  # fmt: skip


def logging_beside(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """Route log lines through the progress bar (so they do not break it) while it is shown."""
    if bar.disable:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def versions(*packages: str) -> dict[str, str]:
    """Version stamp of a result: sap-rl, torch, numpy, Python and the given packages.

    Example:
        >>> sorted(versions())
        ['numpy', 'python', 'sap_rl', 'torch']
    """
    import importlib

    import numpy
    import torch

    from sap_rl import __version__

    stamp = {"sap_rl": __version__, "torch": torch.__version__, "numpy": numpy.__version__}
    for name in packages:
        stamp[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    return {**stamp, "python": platform.python_version()}
