"""``benchmarks/bench_grid.py`` runs end to end on tiny settings and prints its ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grid.py"


def test_bench_grid_prints_walls_ratios_and_identical_files() -> None:
    pytest.importorskip("ray")
    result = subprocess.run(
        [sys.executable, str(BENCH), "--defense", "dense", "--eps", "0,1", "--episodes", "2",
         "--max-steps", "20"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"speedup local 2 / local 1: [0-9.]+x", out), out
    assert re.search(r"ray 2 / local 2 wall: [0-9.]+", out), out
    assert out.count("byte-identical to local 1: yes") == 3, out
    assert re.search(r"per-cell / per-game = [0-9.]+x", out), out
