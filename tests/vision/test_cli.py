"""``sap-rl vision train`` / ``evaluate`` end to end on the built-in digits, and user errors."""

from __future__ import annotations

import csv
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
