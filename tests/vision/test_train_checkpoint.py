"""Vision training checkpoints: a pickle planted in place of a checkpoint file never runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sap_rl.config import from_dict
from sap_rl.vision.train_config import PRESETS, TrainConfig


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run stopped after 1 of 2 epochs: a checkpoint that a rerun resumes."""
    from sap_rl.vision.train import train

    out = tmp_path_factory.mktemp("vision") / "run"
    data = {**PRESETS["digits"], "schedule": [{"epochs": 2, "lr": 0.05}]}
    train(from_dict(TrainConfig, data), out, quiet=True, max_epochs=1)
    return out


@pytest.mark.parametrize("which", ["optimizer", "weights"])
def test_pickle_in_a_checkpoint_is_not_trusted(
    stopped_run: Path, tmp_path: Path, which: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for item in stopped_run.rglob("*"):
        target = run / item.relative_to(stopped_run)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(item.read_bytes())
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"state": _Payload(marker)}, buffer)  # what a tampered torch.save file holds
    (run / "checkpoints" / state[which]).write_bytes(buffer.getvalue())
    config = yaml.safe_load((run / "config.yaml").read_text())
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "sap_rl.cli", "vision", "train"),
            *("--config", str(config_file), "--out", str(run), "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert "never as pickles" in proc.stderr
    assert "weights_only" not in proc.stderr
    assert not marker.exists()
    assert not (run / "model.safetensors").exists()
