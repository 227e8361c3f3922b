"""``benchmarks/bench_grid.py`` runs end to end on tiny settings and prints its ratios.

Tiny: one cell of one 5-step game, so the local runs stay in the script's process, and no Ray
(its start alone takes longer than the rest). What the figures would show, Ray's files and its
retries, is tested in ``test_ray.py``; this test only checks that the script runs and prints
parseable lines.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grid.py"


def test_bench_grid_prints_walls_ratios_and_identical_files() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--defense", "dense", "--eps", "0", "--episodes", "1",
         "--max-steps", "5", "--no-ray"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"speedup local 2 / local 1: [0-9.]+x", out), out
    assert "ray 2" not in out
    assert out.count("byte-identical to local 1: yes") == 2, out
    assert re.search(r"per-cell / per-game = [0-9.]+x", out), out
