"""``sap-rl prune --resume`` and ``--time-limit``: a stopped agent pruning resumed gives bitwise the
agent of an uninterrupted run (the frames are collected again, seeded); other settings and
planted pickles are refused in one line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.io import load_tensors

AGENT = Path(__file__).resolve().parents[2] / "agents" / "roadrunner-ddqn"
TINY = ["--sparsity", "0.9", "--frames", "40", "--prune-epochs", "1", "--finetune-epochs", "1",
        "--steps", "1", "--device", "cpu", "--threads", "1", "--quiet"]  # fmt: skip


def _prune(out: Path, *extra: str) -> int:
    return main(["prune", "--agent", str(AGENT), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by its time limit after its pruning epoch."""
    out = tmp_path_factory.mktemp("rl-prune") / "stopped"
    assert _prune(out, "--time-limit", "0.0001") == 0
    assert (out / "checkpoint" / "state.json").is_file() and not (out / "card.json").exists()
    return out


def _copy(run: Path, to: Path) -> Path:
    for item in run.rglob("*"):
        target = to / item.relative_to(run)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    return to


def test_a_stopped_run_resumes_bitwise(
    stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(stopped, tmp_path / "run")
    assert _prune(run, "--resume") == 0
    assert "pruned to sparsity" in capsys.readouterr().out
    whole = tmp_path / "whole"
    assert _prune(whole) == 0
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # weights and masks
    assert not (run / "checkpoint").exists()


def test_the_time_limit_line_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p"
    assert _prune(out, "--time-limit", "0.0001") == 0
    printed = capsys.readouterr().out
    assert "time limit reached after epoch 1 of 2" in printed and "--resume" in printed
    assert _prune(out) == 2  # a checkpoint is never overwritten without --resume
    err = capsys.readouterr().err
    assert "pass --resume" in err and err.count("\n") == 1


def test_other_settings_are_refused(
    stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(stopped, tmp_path / "run")
    assert _prune(run, "--resume", "--frames", "48") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "frames" in err and err.count("\n") == 1


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("pattern", ["model-*.safetensors", "optimizer-*.safetensors"])
def test_a_planted_pickle_never_runs(
    stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str
) -> None:
    run = _copy(stopped, tmp_path / "run")
    target = next((run / "checkpoint").glob(pattern))
    marker = tmp_path / "pwned"
    target.write_bytes(pickle.dumps(_Payload(marker)))
    assert _prune(run, "--resume") == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "code in a checkpoint file ran"
    assert target.name in err and "never as pickles" in err and err.count("\n") == 1
