"""``benchmarks/bench_harp.py`` runs end to end on tiny settings and prints its ratio.

This checks that the script works (its number goes into the README), not how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_harp.py"


def test_bench_harp_prints_the_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--batches", "2", "--batch", "8",
         "--steps", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = re.search(r"ratio HARP/dense = ([0-9.]+)", result.stdout)
    assert ratio is not None and float(ratio.group(1)) > 0.0, result.stdout
    assert re.search(r"^dense PGD-AT epoch\s+[0-9.]+ s$", result.stdout, re.MULTILINE)
