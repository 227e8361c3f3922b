"""The grid engine without a domain: resume from cell and unit files, seeds, executors agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sap_rl.errors import UserError
from sap_rl.grid import JsonCells, LocalExecutor, Unit, Work, make_executor, run_grid, split_cell
from sap_rl.grid.store import load_partial, save_partial
from sap_rl.grid.units import stable_seed


class SeedRunner:
    """A unit's result: its seed and items (what a real runner derives its draws from)."""

    def __call__(self, unit: Unit, report: object) -> list[int]:
        return [stable_seed(unit.cell, unit.start), unit.start, unit.stop]


def _grid() -> dict[str, list[Unit]]:
    return {cell: split_cell(cell, 5, 2) for cell in ("a", "b", "c")}


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "cells").glob("*.json"))}


def test_units_resume_and_cells_are_the_same_whatever_the_workers(tmp_path: Path) -> None:
    work = Work(SeedRunner, ())
    whole = run_grid(_grid(), JsonCells(tmp_path / "one", 0), work, LocalExecutor(1),
                     progress=False)  # fmt: skip
    assert whole.played == ["a", "b", "c"] and whole.missing == []
    # Stopped after four units: cell a is written, b keeps its one finished unit in a unit file.
    started = []

    def may_start() -> bool:
        started.append(1)
        return len(started) <= 4

    part = run_grid(_grid(), JsonCells(tmp_path / "two", 0), work, LocalExecutor(1),
                    may_start=may_start, progress=False)  # fmt: skip
    assert (part.played, part.missing) == (["a"], ["b", "c"])
    assert (tmp_path / "two" / "cells" / "b.units" / "0.json").is_file()
    rest = run_grid(_grid(), JsonCells(tmp_path / "two", 0), work, LocalExecutor(2),
                    progress=False)  # fmt: skip
    assert (rest.reused, rest.played) == (["a"], ["b", "c"])
    assert not (tmp_path / "two" / "cells" / "b.units").exists()
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    timings = json.loads((tmp_path / "two" / "timings.json").read_text())
    assert set(timings["cells"]) == {"a", "b", "c"}


def test_a_unit_checkpoint_counts_its_seconds_and_goes_with_its_unit(tmp_path: Path) -> None:
    grid = {"a": split_cell("a", 4, 2)}
    first, second = grid["a"]
    save_partial(tmp_path, first, {"step": 3}, 0, 1000.0)  # a runner's checkpoint, 1000 s in
    save_partial(tmp_path, second, {"step": 5}, 1, 50.0)  # of other settings: ignored
    started: list[int] = []

    def may_start() -> bool:
        started.append(1)
        return len(started) <= 1

    run = run_grid(grid, JsonCells(tmp_path, 0), Work(SeedRunner, ()), LocalExecutor(1),
                   may_start=may_start, progress=False)  # fmt: skip
    assert run.missing == ["a"]
    assert load_partial(tmp_path, first, 0) is None  # the unit's file replaces its checkpoint
    assert (tmp_path / "cells" / "a.units" / "0.json").is_file()
    seconds = json.loads((tmp_path / "timings.json").read_text())["cells"]["a"]
    assert 1000.0 <= seconds < 1100.0
    run_grid(grid, JsonCells(tmp_path, 0), Work(SeedRunner, ()), LocalExecutor(1), progress=False)
    assert not (tmp_path / "cells" / "a.units").exists()
    assert json.loads((tmp_path / "timings.json").read_text())["cells"]["a"] < 1100.0


def test_other_settings_are_refused(tmp_path: Path) -> None:
    work = Work(SeedRunner, ())
    run_grid(_grid(), JsonCells(tmp_path, 0), work, LocalExecutor(1), progress=False)
    with pytest.raises(UserError, match="other settings"):
        run_grid(_grid(), JsonCells(tmp_path, 1), work, LocalExecutor(1), progress=False)


def test_bad_backends_and_workers_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown backend 'spark'"):
        make_executor("spark")
    with pytest.raises(UserError, match="workers must be"):
        make_executor("local", 0)


def test_ray_backend_without_ray_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from sap_rl.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "eval"
    code = main(["evaluate", "--agent", "roadrunner-ddqn", "--backend", "ray", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "sap-rl[ray]"' in err and "\n" not in err
    assert not out.exists()
