"""Evaluation: calibration metrics, the paper's vs EOT gradients, result files, resume."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sap_rl.vision.evaluate as evaluate_module
from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.vision.calibration import expected_calibration_error, reliability_bins
from sap_rl.vision.evaluate import ExpectedPrediction, VisionEvalConfig, evaluate, predict_proba


def test_ece_known_values() -> None:
    conf = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([1, 1, 1, 0, 1, 0])
    # bin (0.9, 1.0]: acc 0.75, conf 0.95 -> gap 0.2, weight 4/6; bin (0.5, 0.6]: gap 0.05, 2/6
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(
        4 / 6 * 0.2 + 2 / 6 * 0.05
    )
    assert expected_calibration_error(torch.ones(5), torch.ones(5)) == 0.0
    assert expected_calibration_error(torch.ones(5), torch.zeros(5)) == 1.0


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=200),
    n_bins=st.integers(1, 20),
)
def test_reliability_bins_properties(values: list[tuple[float, bool]], n_bins: int) -> None:
    conf = torch.tensor([v for v, _ in values], dtype=torch.float64)
    hit = torch.tensor([float(c) for _, c in values], dtype=torch.float64)
    bins = reliability_bins(conf, hit, n_bins=n_bins)
    assert sum(bins.count) == len(values)
    assert 0.0 <= bins.ece <= 1.0
    for lo, hi, c, n in zip(bins.edges, bins.edges[1:], bins.confidence, bins.count, strict=False):
        if n:
            assert lo - 1e-12 <= c <= hi + 1e-12
    # with one bin, ECE is |accuracy - mean confidence|
    one = reliability_bins(conf, hit, n_bins=1)
    assert one.ece == pytest.approx(abs(hit.mean().item() - conf.mean().item()), abs=1e-9)


class _Noisy(nn.Module):
    """A stochastic toy classifier: logits = W x + noise."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + torch.randn(x.shape[0], 4)


def test_expected_prediction_averages_softmax() -> None:
    torch.manual_seed(0)
    model = _Noisy()
    x = torch.randn(2, 3)
    out = ExpectedPrediction(model, samples=2000)(x)
    torch.manual_seed(1)
    reference = model(x.repeat(2000, 1)).softmax(-1).reshape(2000, 2, 4).mean(0)
    assert torch.allclose(out.exp(), reference, atol=0.02)
    probs = predict_proba(model, x, samples=50, max_batch=20)
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(-1), torch.ones(2))
    x.requires_grad_(True)
    ExpectedPrediction(model, samples=8)(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eval_config_validation() -> None:
    assert VisionEvalConfig().eps_values() == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert VisionEvalConfig(eps=[4, 2]).eps_values() == [0.0, 2.0, 4.0]
    assert (VisionEvalConfig().mc_samples, VisionEvalConfig().attacks) == (
        100,
        ["fgsm", "fgsm-eot", "pgd-10"],
    )
    with pytest.raises(UserError, match="mc_sample"):
        from_dict(VisionEvalConfig, {"mc_samples": 0})
    with pytest.raises(UserError, match="eps"):
        from_dict(VisionEvalConfig, {"eps": [-1]})
    # Passes per gradient are bounded (a typo must not run for days); the bound is named.
    assert (
        from_dict(VisionEvalConfig, {"eot_samples": 1000, "grad_samples": 1000}).eot_samples == 1000
    )
    for key in ("eot_samples", "grad_samples"):
        with pytest.raises(UserError, match=f"{key} must be an integer from 1 to 1000, got 1001"):
            from_dict(VisionEvalConfig, {key: 1001})


SMALL = {
    "eps": [0, 32],
    "defenses": ["dense", "sap-100", "dropout-0.1"],
    "attacks": ["fgsm", "fgsm-eot", "pgd-2"],
    "mc_samples": 4,
    "grad_samples": 2,
    "eot_samples": 2,
    "examples": 40,
    "batch_size": 20,
    "bins": 10,
}


@pytest.fixture(scope="module")
def small_run(digits_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    evaluate(digits_model_dir, from_dict(VisionEvalConfig, SMALL), out, quiet=True)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_result_files(small_run: Path) -> None:
    for name in ("summary.csv", "summary.json", "calibration.csv", "accuracy.png",
                 "reliability.png", "eval_config.yaml"):  # fmt: skip
        assert (small_run / name).is_file(), name
    rows = _rows(small_run / "summary.csv")
    assert list(rows[0]) == [
        "defense", "attack", "eps", "n", "mean", "std", "sem", "relative", "normalized",
    ]  # fmt: skip
    # three attacks and their worst case, three defenses, two budgets
    assert len(rows) == 3 * 4 * 2 and {r["n"] for r in rows} == {"40"}
    cell = {(r["defense"], r["attack"], float(r["eps"])): r for r in rows}
    dense_clean = float(cell[("dense", "fgsm", 0.0)]["mean"])
    for (defense, attack, eps), r in cell.items():
        acc = float(r["mean"])
        clean = float(cell[(defense, attack, 0.0)]["mean"])
        assert float(r["relative"]) == pytest.approx(acc / clean)
        assert float(r["normalized"]) == pytest.approx((acc - 0.1) / (dense_clean - 0.1))
        if eps == 0:  # the clean cell is shared by all attacks of a defense
            assert r["mean"] == cell[(defense, "fgsm", 0.0)]["mean"]
    # a deterministic model: EOT with one pass is the plain attack
    assert cell[("dense", "fgsm", 32.0)]["mean"] == cell[("dense", "fgsm-eot", 32.0)]["mean"]
    # large perturbations hurt the dense model, PGD at least as much as FGSM (up to noise)
    assert float(cell[("dense", "fgsm", 32.0)]["mean"]) < dense_clean
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["examples"] == 40 and summary["model"]["dataset"] == "digits"
    assert len(summary["calibration"]) == 18 and len(summary["summary"]) == 24
    eces = [float(r["ece"]) for r in _rows(small_run / "calibration.csv")]
    assert all(0 <= e <= 1 for e in eces)


def test_worst_row_is_the_per_example_minimum_of_the_attack_rows(small_run: Path) -> None:
    from sap_rl.grid.store import cell_path
    from sap_rl.io import load_tensors

    rows = {
        (r["defense"], r["attack"], float(r["eps"])): r for r in _rows(small_run / "summary.csv")
    }
    summary = json.loads((small_run / "summary.json").read_text())
    pairs = {(d["defense"], d["attack"], d["eps"]): d for d in summary["paired_differences"]}
    correct = {}
    for defense in SMALL["defenses"]:
        for eps in (0.0, 32.0):
            cells = [f"{defense}__clean__eps0" if eps == 0 else f"{defense}__{a}__eps{eps:g}"
                     for a in SMALL["attacks"]]  # fmt: skip
            per_attack = [load_tensors(cell_path(small_run, c, ".safetensors"))["correct"]
                          for c in cells]  # fmt: skip
            correct[(defense, eps)] = torch.stack(per_attack).min(dim=0).values.double()
            worst = rows[(defense, "worst", eps)]
            assert float(worst["mean"]) == pytest.approx(float(correct[(defense, eps)].mean()))
            assert float(worst["mean"]) <= min(
                float(rows[(defense, a, eps)]["mean"]) for a in SMALL["attacks"]
            )
    for defense in ("sap-100", "dropout-0.1"):  # paired per image against dense
        for eps in (0.0, 32.0):
            d = pairs[(defense, "worst", eps)]
            diff = correct[(defense, eps)] - correct[("dense", eps)]
            assert d["diff"] == pytest.approx(float(diff.mean()))
            assert d["n"] == 40 and d["resamples"] == 10_000 and d["seed"] == 0
            assert d["ci_low"] <= d["diff"] + 1e-9 and d["diff"] <= d["ci_high"] + 1e-9


def test_rerun_reuses_cells(
    small_run: Path, digits_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (small_run / "summary.csv").read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(evaluate_module, "_run_cell", boom)
    evaluate(digits_model_dir, from_dict(VisionEvalConfig, SMALL), small_run, quiet=True)
    assert (small_run / "summary.csv").read_text() == before


def test_changed_settings_invalidate_cells(
    small_run: Path, digits_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(small_run, out)
    calls = []
    original = evaluate_module._run_cell

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args[2])
        return original(*args, **kwargs)  # type: ignore[arg-type]

    settings_ = {**SMALL, "defenses": ["dense"], "attacks": ["fgsm"], "seed": 5}
    mp = pytest.MonkeyPatch()
    mp.setattr(evaluate_module, "_run_cell", counting)
    try:
        evaluate(digits_model_dir, from_dict(VisionEvalConfig, settings_), out, quiet=True)
    finally:
        mp.undo()
    assert len(calls) == 2  # clean and eps 32: the old cells had another seed


def test_evaluation_is_reproducible(digits_model_dir: Path, tmp_path: Path) -> None:
    settings_ = {**SMALL, "defenses": ["sap-100"], "attacks": ["pgd-2"], "eps": [8],
                 "examples": 16}  # fmt: skip
    a = evaluate(
        digits_model_dir, from_dict(VisionEvalConfig, settings_), tmp_path / "a", quiet=True
    )
    b = evaluate(
        digits_model_dir, from_dict(VisionEvalConfig, settings_), tmp_path / "b", quiet=True
    )
    assert a == b


def test_unknown_names_are_user_errors(digits_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown defense"):
        evaluate(digits_model_dir, VisionEvalConfig(defenses=["sap"]), tmp_path, quiet=True)
    with pytest.raises(UserError, match="unknown attack"):
        evaluate(digits_model_dir, VisionEvalConfig(attacks=["cw"]), tmp_path, quiet=True)


def test_a_locked_out_folder_is_refused_and_left_alone(
    digits_model_dir: Path, tmp_path: Path, lock_holder: Callable[[Path], subprocess.Popen[str]]
) -> None:
    out = tmp_path / "out"
    holder = lock_holder(out)  # another process evaluating into the same folder
    with pytest.raises(UserError, match=f"is in use by another run \\(pid {holder.pid} "):
        evaluate(digits_model_dir, from_dict(VisionEvalConfig, SMALL), out, quiet=True)
    assert [p.name for p in out.iterdir()] == [".lock"]
