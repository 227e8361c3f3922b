"""Training sweeps (``sap-rl train --game G --seed 0,1``) on the local and Ray executors.

Real ALE, the tiny config of ``conftest.py`` at 200 steps: the runs of one sweep are trained in
this process and again on two Ray actors, and their agent folders must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from sap_rl.cli import main

STEPS = "200"
# When a run ended and how long it took differ between runs; so does the weights file's SHA-256:
# safetensors writes the file's metadata in hash-map order, which changes from process to process.
VARYING = {"trained_on", "sha256"}
VARYING_EVALUATION = {"wall_time_s"}


def _sweep(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--game", "Breakout", "--seed", "0,1", "--timesteps", STEPS,
            "--config", str(config), "--out", str(out), "--no-progress", *extra]  # fmt: skip


def _agent(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights (each tensor's bytes, and the metadata) and the card, less its times.

    Not the weights file's bytes (see ``VARYING``).
    """
    card = json.loads((run / "agent" / "card.json").read_text())
    for key in VARYING:
        card.pop(key)
    for key in VARYING_EVALUATION:
        card["evaluation"].pop(key)
    with safe_open(run / "agent" / "model.safetensors", "np") as weights:
        tensors = {name: weights.get_tensor(name).tobytes() for name in weights.keys()}  # noqa: SIM118
        tensors["metadata"] = weights.metadata()
    return tensors, card


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_config_file: Path) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "local"
    assert main(_sweep(tiny_config_file, out, "--backend", "local")) == 0
    return out


def test_a_local_sweep_trains_one_run_folder_per_seed(
    local_sweep: Path, tiny_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = sorted(p.name for p in local_sweep.iterdir() if p.is_dir())
    assert runs == ["breakout-ddqn-0", "breakout-ddqn-1"]
    for run in runs:
        for name in ("config.yaml", "eval.csv", "checkpoint/state.json", "agent/card.json"):
            assert (local_sweep / run / name).is_file(), (run, name)
    cards = [_agent(local_sweep / run)[1] for run in runs]
    assert [c["seed"] for c in cards] == [0, 1] and [c["timesteps"] for c in cards] == [200, 200]
    assert _agent(local_sweep / runs[0])[0] != _agent(local_sweep / runs[1])[0]
    # the same command again: every run is finished, nothing is trained
    capsys.readouterr()
    before = (local_sweep / runs[0] / "agent" / "card.json").read_bytes()
    assert main(_sweep(tiny_config_file, local_sweep)) == 0
    assert "breakout-ddqn-1: 200 steps" in capsys.readouterr().out
    assert (local_sweep / runs[0] / "agent" / "card.json").read_bytes() == before


def test_an_unfinished_run_needs_resume_and_resumes_from_its_checkpoint(
    local_sweep: Path, tiny_config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(local_sweep, out)
    expected = _agent(out / "breakout-ddqn-1")
    shutil.rmtree(out / "breakout-ddqn-1" / "agent")  # interrupted in its final games
    assert main(_sweep(tiny_config_file, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has a checkpoint; pass --resume" in err[0]
    assert not (out / "breakout-ddqn-1" / "agent").exists()
    assert main(_sweep(tiny_config_file, out, "--resume")) == 0
    assert _agent(out / "breakout-ddqn-1") == expected


def test_a_ray_sweep_brings_back_the_same_agent_folders(
    local_sweep: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        assert main(_sweep(tiny_config_file, out, "--backend", "ray", "--workers", "2")) == 0
    finally:
        ray.shutdown()
    for run in ("breakout-ddqn-0", "breakout-ddqn-1"):
        assert _agent(out / run) == _agent(local_sweep / run), run
        assert not list((out / run / "agent").glob(".*.tmp"))  # written atomically


def test_sweep_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    for argv, match in [
        (["--game", "Breakout,Pnog", "--seed", "0"], "did you mean Pong"),
        (["--game", "Breakout", "--seed", "0,0"], "--seed lists a seed twice"),
        (["--seed", "0,1"], "--game is required"),
    ]:
        assert main(["train", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert not out.exists()
