"""The committed digits study: its models load and match its result files; the slow test retrains
the dense model with the committed config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sap_rl.config import load_config
from sap_rl.vision.models import load_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "vision"
MODELS = ["digits-dense", "digits-paper-adv", "digits-kurakin-adv", "digits-kurakin-fgsm-adv"]


@pytest.mark.parametrize("name", MODELS)
def test_committed_models_match_their_results(name: str) -> None:
    _, card = load_model(RESULTS / "models" / name)  # checks the SHA-256
    summary = json.loads((RESULTS / name / "summary.json").read_text())
    assert summary["model"]["sha256"] == card.sha256
    assert summary["examples"] == card.test_examples == 540
    with open(RESULTS / name / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clean = {r["defense"]: float(r["mean"]) for r in rows if float(r["eps"]) == 0}
    assert clean["dense"] == pytest.approx(card.clean_accuracy)
    assert card.clean_accuracy > 0.97
    assert (RESULTS / name / "accuracy.png").is_file()


@pytest.mark.slow
def test_retraining_the_dense_digits_model_reproduces_it(tmp_path: Path) -> None:
    from sap_rl.io import load_tensors
    from sap_rl.vision.train import train
    from sap_rl.vision.train_config import TrainConfig

    config = load_config(TrainConfig, ROOT / "configs" / "vision" / "digits.yaml")
    card = train(config, tmp_path, quiet=True)
    _, committed = load_model(RESULTS / "models" / "digits-dense")
    assert card.clean_accuracy == pytest.approx(committed.clean_accuracy, abs=0.01)
    new = load_tensors(tmp_path / "model.safetensors")
    old = load_tensors(RESULTS / "models" / "digits-dense" / "model.safetensors")
    assert set(new) == set(old)
