"""``sap-rl status`` and :mod:`sap_rl.grid.status`: a grid folder read from its files alone."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.grid.engine import JsonCells, run_grid
from sap_rl.grid.executors import LocalExecutor, Work, _Echo
from sap_rl.grid.status import folder_status
from sap_rl.grid.store import record_time, save_partial, save_unit, write_run_file
from sap_rl.grid.units import split_cell
from sap_rl.lock import output_lock
from sap_rl.rl.play import GameRecord, PlayState
from sap_rl.rl.unit_resume import encode_play_state

STAMP = {"game": "Pong", "agent": "pong-test", "seed": 0}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A grid folder: cell ``a`` finished by a real run; cell ``b`` (3 units of 4, 4 and 2 games)
    with unit 1 finished, unit 0 stopped mid-way and unit 2 not started."""
    out = tmp_path / "run"
    write_run_file(out, STAMP)
    files = JsonCells(out, fingerprint=STAMP)
    run_grid({"a": split_cell("a", 3, 2)}, files, Work(_Echo, ()), LocalExecutor(1), progress=False)
    units = split_cell("b", 10, 4)
    save_unit(out, units[1], [4, 5, 6, 7], STAMP)
    record_time(out, "b", 125.0)
    record = GameRecord(episode=1, seed=1, reward=3.0, length=40, truncated=False)
    play = PlayState(4, [0, 4, 2, 3], {0: [1] * 900, 2: [0] * 7, 3: [2] * 7, 4: []}, {1: record})
    save_partial(out, units[0], {"play": encode_play_state(play), "random": {}}, STAMP, 4000.0)
    return out


def test_finished_cells_units_and_checkpoints_are_read(folder: Path) -> None:
    status = folder_status(folder)
    assert status.finished == ["a"] and status.fingerprint == STAMP
    assert status.owner is None and status.seconds["b"] == 125.0
    [cell] = status.unfinished
    assert (cell.name, cell.units, cell.finished_units) == ("b", 3, [1])
    [unit] = cell.running
    assert (unit.index, unit.size, unit.seconds) == (0, 4, 4000.0)
    assert abs(unit.saved - time.time()) < 60


def test_the_command_prints_where_each_unit_stands(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{folder}: Pong, pong-test; no run writes it now"
    assert lines[1] == "finished: 1 cell (a)"
    assert lines[2] == "b: 1 of 3 units finished (2 min of work)"
    assert re.fullmatch(r"  unit 0: 1 of 4 games finished, 4 running at 0-900 agent steps; "
                        r"checkpoint saved \d+ s ago; 67 min of work", lines[3])  # fmt: skip
    assert len(lines) == 4


def test_the_run_that_holds_the_folder_is_named(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with output_lock(folder):
        assert main(["status", str(folder)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"; pid {os.getpid()} on " in first and "writes it, since " in first


def test_damaged_and_foreign_files_are_skipped(folder: Path) -> None:
    units = folder / "cells" / "b.units"
    (units / "2.partial.json").write_text("{not json")
    (units / "notes.json").write_text('{"unit": "x"}')
    (folder / "timings.json").write_text("[]")
    status = folder_status(folder)
    assert [u.index for u in status.unfinished[0].running] == [0] and status.seconds == {}


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_a_folder_without_an_evaluation_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("")
    assert main(["status", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the --out folder of an evaluation" in err
