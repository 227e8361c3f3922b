"""``benchmarks/bench_grid.py`` runs end to end on tiny settings and prints its ratios.

Tiny: one cell of 5-step games, and no Ray (its start alone takes longer than the rest). The
executors mode plays one game, so its local runs stay in the script's process; the critical-path
mode plays two games with one worker (per-cell: one unit of 2 games; per-game: two units). What
the figures would show, Ray's files and its retries, is tested in ``test_ray.py``; this test only
checks that the script runs and prints parseable lines.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grid.py"


def _bench(*args: str) -> str:
    """The benchmark's stdout on ``args`` (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_bench_grid_prints_walls_ratios_and_identical_files() -> None:
    out = _bench("--defense", "dense", "--eps", "0", "--episodes", "1", "--max-steps", "5",
                 "--no-ray")  # fmt: skip
    assert re.search(r"speedup local 2 / local 1: [0-9.]+x", out), out
    assert "ray 2" not in out
    assert out.count("byte-identical to local 1: yes") == 2, out
    assert re.search(r"per-cell / per-game = [0-9.]+x", out), out


def test_bench_grid_critical_path_prints_walls_ratio_and_identical_files() -> None:
    out = _bench("--critical-path", "--eps", "0", "--episodes", "2", "--max-steps", "5",
                 "--workers", "1")  # fmt: skip
    assert re.search(r"^dense__clean +\d+ \d+$", out, re.M), out
    walls = re.search(r"per-cell units ([0-9.]+) s, per-game units ([0-9.]+) s, "
                      r"per-cell / per-game = ([0-9.]+)x", out)  # fmt: skip
    assert walls, out
    per_cell, per_game, ratio = map(float, walls.groups())
    assert per_cell > 0 and per_game > 0 and ratio > 0
    assert "episodes.csv of per-game units byte-identical to per-cell: yes" in out, out
    assert "but for n_envs (1 of 1 cells, deterministic defenses): yes" in out, out
