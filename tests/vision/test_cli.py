"""``sap-rl vision train`` / ``evaluate`` end to end on the built-in digits, and user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sap_rl.cli import main


def test_digits_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    assert main(["vision", "train", "--dataset", "digits", "--epochs", "2", "--out", str(model),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert "clean test accuracy" in capsys.readouterr().out
    assert (model / "card.json").is_file() and (model / "config.yaml").is_file()
    out = tmp_path / "eval"
    assert main(["vision", "evaluate", "--model", str(model), "--out", str(out),
                 "--eps", "0,16", "--defense", "dense,sap-100", "--attack", "fgsm,pgd-2-eot",
                 "--mc-samples", "4", "--grad-samples", "2", "--eot-samples", "2",
                 "--examples", "32", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert "summary.csv" in capsys.readouterr().out
    for name in ("summary.csv", "summary.json", "accuracy.png", "reliability.png",
                 "calibration.csv"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["defense"], r["attack"], r["eps"]) for r in rows} == {
        (d, a, e) for d in ("dense", "sap-100") for a in ("fgsm", "pgd-2-eot", "worst")
        for e in ("0.0", "16.0")
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vision", "train", "--dataset", "cifar10", "--data-root", "/nonexistent"],
         "CIFAR-10 not found"),
        (["vision", "train", "--dataset", "cifar10"], "--data-root"),
        (["vision", "evaluate", "--model", "/nonexistent"], "not a model folder"),
        (["vision", "train", "--config", "/nonexistent.yaml"], "config file not found"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv[:2], *argv[2:], *(["--out", str(tmp_path / "o")])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_names_are_one_line(
    digits_model_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["vision", "evaluate", "--model", str(digits_model_dir), "--defense", "sap-x",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "unknown defense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["vision", "evaluate", "--model", str(digits_model_dir), "--eps", "a,b"])
    assert exit_info.value.code == 2


def _eval_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["vision", "evaluate", "--model", str(model), "--out", str(out), "--defense", "dense",
            "--examples", "40", "--batch-size", "40", "--device", "cpu", "--quiet",
            *extra]  # fmt: skip


def test_pgd_at_a_large_budget_raises_no_gradient_masking_flag(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every attack must bring accuracy to about chance from eps 64 (sap_rl.sanity): PGD does on
    # the dense model, so nothing is flagged.
    out = tmp_path / "eval"
    assert main(_eval_args(digits_model_dir, out, "--eps", "0,64", "--attack", "pgd-10")) == 0
    assert "warning" not in capsys.readouterr().err
    meta = json.loads((out / "summary.json").read_text())
    assert meta["checks"] == [] and meta["config"]["large_eps"] == 64
    with open(out / "summary.csv", newline="") as handle:
        attacked = [r for r in csv.DictReader(handle) if r["eps"] == "64.0"]
    assert float(attacked[0]["mean"]) < 0.1 + 0.05


def test_a_flag_is_printed_stored_and_reported(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # With large_eps at 1 grey level, PGD-2 at eps 1 leaves the accuracy far above chance.
    config = tmp_path / "eval.yaml"
    config.write_text("large_eps: 1\n")
    out = tmp_path / "eval"
    args = _eval_args(digits_model_dir, out, "--config", str(config), "--eps", "0,1",
                      "--attack", "pgd-2")  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    (check,) = json.loads((out / "summary.json").read_text())["checks"]
    assert (check["kind"], check["attack"], check["eps"]) == ("large-budget", "pgd-2", 1.0)
    assert f"sap-rl: warning: large-budget: {check['message']}" in err
    assert main(["report", "--markdown", str(out)]) == 0
    assert check["message"] in capsys.readouterr().out
