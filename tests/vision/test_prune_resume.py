"""``sap-rl vision prune --resume`` and ``--time-limit``: a stopped run resumed gives bitwise the
model of an uninterrupted one; a checkpoint is never overwritten, nor resumed with other settings,
and a damaged one is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.io import load_tensors

QUICK = ["--sparsity", "0.9", "--prune-epochs", "1", "--finetune-epochs", "1", "--steps", "1",
         "--device", "cpu", "--quiet"]  # fmt: skip


def _prune(model: Path, out: Path, *extra: str) -> int:
    return main(["vision", "prune", "--model", str(model), "--out", str(out), *QUICK, *extra])


@pytest.fixture(scope="module")
def whole(digits_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("whole") / "pruned"
    assert _prune(digits_model_dir, out) == 0
    assert not (out / "checkpoint").exists()  # removed once the model folder is written
    return out


@pytest.fixture
def stopped(digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A run stopped by its time limit after its first (pruning) epoch."""
    out = tmp_path / "pruned"
    assert _prune(digits_model_dir, out, "--time-limit", "0.0001") == 0
    printed = capsys.readouterr().out
    assert "time limit reached after epoch 1 of 2" in printed and "--resume" in printed
    assert (out / "checkpoint" / "state.json").is_file()
    assert not (out / "model.safetensors").exists()
    return out


def test_a_stopped_run_resumes_bitwise(
    digits_model_dir: Path, whole: Path, stopped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _prune(digits_model_dir, stopped, "--resume") == 0
    assert "pruned to sparsity" in capsys.readouterr().out
    a = load_tensors(whole / "model.safetensors")
    b = load_tensors(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # weights and masks
    assert not (stopped / "checkpoint").exists()
    assert (stopped / "history.csv").read_text().count("\n") == 3  # header + both epochs


def test_a_checkpoint_is_not_overwritten_without_resume(
    digits_model_dir: Path, stopped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (stopped / "checkpoint" / "state.json").read_bytes()
    assert _prune(digits_model_dir, stopped) == 2
    err = capsys.readouterr().err
    assert "pass --resume" in err and err.count("\n") == 1
    assert (stopped / "checkpoint" / "state.json").read_bytes() == before


def test_resume_with_other_settings_is_refused(
    digits_model_dir: Path, stopped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()}
    assert _prune(digits_model_dir, stopped, "--resume", "--sparsity", "0.8") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "harp.sparsity" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()} == before


def test_a_truncated_checkpoint_is_one_line(
    digits_model_dir: Path, stopped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = next((stopped / "checkpoint").glob("model-*.safetensors"))
    model.write_bytes(model.read_bytes()[:100])
    assert _prune(digits_model_dir, stopped, "--resume") == 2
    err = capsys.readouterr().err
    assert model.name in err and "start over" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_resume_without_a_checkpoint_is_one_line(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _prune(digits_model_dir, tmp_path / "new", "--resume") == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and err.count("\n") == 1


def test_sigterm_keeps_the_last_finished_epoch(digits_model_dir: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sap_rl.cli", "vision", "prune", "--model", str(digits_model_dir),
         "--out", str(out), *QUICK, "--finetune-epochs", "500", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted after epoch" in err and "--resume" in err and "Traceback" not in err
    from sap_rl.pruning.checkpoint import saved_epochs

    done = saved_epochs(out / "checkpoint")
    assert done is not None and done >= 1
    assert not (out / "model.safetensors").exists()
