"""sap-rl vision evaluate with transfer attacks."""

from __future__ import annotations

from pathlib import Path

import torch

from sap_rl.config import from_dict
from sap_rl.io import load_tensors
from sap_rl.vision.evaluate import VisionEvalConfig, evaluate


def test_transfer_cells(digits_model_dir: Path, tmp_path: Path) -> None:
    settings = {
        "eps": [32], "defenses": ["dense", "sap-100"], "attacks": ["fgsm", "transfer-fgsm"],
        "mc_samples": 2, "grad_samples": 2, "examples": 20, "batch_size": 20,
    }  # fmt: skip
    evaluate(digits_model_dir, from_dict(VisionEvalConfig, settings), tmp_path, quiet=True)
    cells = tmp_path / "cells"
    plain = load_tensors(cells / "dense__fgsm__eps32.safetensors")
    transfer = load_tensors(cells / "dense__transfer-fgsm__eps32.safetensors")
    # on the dense network a transfer attack is the attack itself
    assert torch.equal(plain["prediction"], transfer["prediction"])
    assert (cells / "sap-100__transfer-fgsm__eps32.safetensors").is_file()
