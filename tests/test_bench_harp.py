"""``benchmarks/bench_harp.py`` and ``bench_pruned.py`` run end to end on tiny settings.

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


def test_bench_pruned_prints_counts_and_times(tmp_path: Path) -> None:
    from sap_rl.vision.models import build_model, save_model

    net = build_model("digits_cnn", num_classes=10, input_shape=(1, 8, 8))
    card = {
        "name": "m", "architecture": "digits_cnn", "dataset": "digits", "num_classes": 10,
        "input_shape": [1, 8, 8], "classes": list("0123456789"), "adversarial": "none",
        "epochs": 0, "clean_accuracy": 0.1, "test_examples": 540, "sap_rl_version": "0",
    }  # fmt: skip
    save_model(net, tmp_path / "m", card)
    result = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "bench_pruned.py"), str(tmp_path / "m"),
         "--rounds", "1", "--examples", "4", "--mc-samples", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^m\s+38,160\s+38,282\s+116,352\s+116,352\s+[0-9.]+\s+[0-9.]+$",
                     result.stdout, re.MULTILINE), result.stdout  # fmt: skip
