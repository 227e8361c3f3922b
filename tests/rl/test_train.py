"""End-to-end training on the real ALE (tiny settings): outputs, save -> load, resume."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sap_rl.errors import UserError
from sap_rl.rl.agent import load_agent
from sap_rl.rl.checkpoint import load_checkpoint_state, restore_checkpoint
from sap_rl.rl.dqn import DoubleDQN
from sap_rl.rl.envs import make_vec_env, obs_to_tensor
from sap_rl.rl.train import load_run_config, train
from sap_rl.rl.train_config import TrainConfig, resolve_train_config

TINY_STEPS = 300  # as in conftest.TINY_CONFIG


def test_run_folder_contents(trained_run: Path) -> None:
    checkpoint = [f"checkpoint/{name}" for name in ("policy.safetensors", "optimizer.safetensors",
                                                    "replay.npz", "state.json")]  # fmt: skip
    for name in ("config.yaml", "progress.csv", "eval.csv", *checkpoint,
                 "agent/model.safetensors", "agent/card.json"):  # fmt: skip
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "checkpoint" / "model.zip").exists()  # SB3's pickle: never written
    game, cfg = load_run_config(trained_run)
    assert game == "Breakout"
    assert cfg.timesteps == TINY_STEPS
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["dqn"]["n_steps"] == 3
    rows = list(csv.DictReader((trained_run / "eval.csv").open()))
    assert [int(r["timesteps"]) for r in rows] == [150, 300]
    assert all(float(r["wall_time_s"]) > 0 for r in rows)


def test_card_has_clean_and_random_scores(trained_run: Path) -> None:
    card = json.loads((trained_run / "agent" / "card.json").read_text())
    assert card["game"] == "Breakout"
    assert card["env_id"] == "ALE/Breakout-v5"
    assert card["algorithm"] == "DDQN"
    assert card["timesteps"] == TINY_STEPS
    assert card["clean_score"]["episodes"] == 2
    assert isinstance(card["random_score"], float)
    assert card["human_score"] == 30.5
    assert card["hyperparameters"]["n_steps"] == 3
    assert card["hyperparameters"]["optimizer"] == "Adam (torch, fused)"
    assert card["wrappers"]["frame_stack"] == 4
    assert card["wrappers"]["repeat_action_probability"] == 0.0
    assert card["evaluation"]["whole_games"] is True


def test_save_load_gives_identical_q_values(trained_run: Path) -> None:
    net, card = load_agent(trained_run / "agent", game="breakout")
    # NCHW like the agent's network: channels-last convolutions round differently
    sb3 = DoubleDQN("CnnPolicy", make_vec_env("Breakout", 1, seed=0, training=True), device="cpu",
                    buffer_size=10, learning_starts=0, channels_last=False)  # fmt: skip
    restore_checkpoint(sb3, trained_run, load_checkpoint_state(trained_run))
    assert sb3.num_timesteps == card.timesteps
    venv = make_vec_env("Breakout", 4, seed=3, training=False)
    obs = venv.reset()
    for _ in range(20):
        obs, *_ = venv.step(np.random.default_rng(0).integers(4, size=4))
    venv.close()
    with torch.no_grad():
        ours = net(obs_to_tensor(obs))
        theirs = sb3.q_net(torch.as_tensor(obs))
    assert torch.equal(ours, theirs)
    assert ours.shape == (4, 4)


def test_resume_continues_the_step_count(run_copy: Path) -> None:
    _, cfg = load_run_config(run_copy)
    cfg.timesteps = TINY_STEPS + 100
    result = train("Breakout", cfg, out=run_copy, resume=True)
    assert result.timesteps == TINY_STEPS + 100
    assert result.card.timesteps == TINY_STEPS + 100
    state = json.loads((run_copy / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == TINY_STEPS + 100
    assert [e["timesteps"] for e in state["evaluations"]] == [150, 300]
    rows = list(csv.DictReader((run_copy / "progress.csv").open()))
    steps = [int(r["time/total_timesteps"]) for r in rows if r["time/total_timesteps"]]
    assert max(steps) > TINY_STEPS  # the SB3 log continued past the checkpoint, same file
    assert min(steps) < TINY_STEPS
    assert state["model"]["num_timesteps"] == TINY_STEPS + 100


def test_existing_checkpoint_needs_resume(trained_run: Path) -> None:
    _, cfg = load_run_config(trained_run)
    with pytest.raises(UserError, match="already has a checkpoint at 300 steps; pass --resume"):
        train("Breakout", cfg, out=trained_run)
    with pytest.raises(UserError, match="already >= --timesteps"):
        train("Breakout", cfg, out=trained_run, resume=True)


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        train("Pong", TrainConfig(timesteps=10), out=tmp_path / "empty", resume=True)


def test_interrupted_run_resumes(
    tmp_path: Path, tiny_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sap_rl.rl import train as train_module

    cfg = resolve_train_config(yaml.safe_load(tiny_config_file.read_text()), game="Breakout")
    cfg.eval.freq = 120
    cfg.checkpoint_freq = 0  # no periodic checkpoints: only the interruption saves one
    original = train_module._EvalAndCheckpoint.evaluate

    def interrupt(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module._EvalAndCheckpoint, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train("Breakout", cfg, out=tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == 120
    assert not (tmp_path / "run" / "agent").exists()

    monkeypatch.setattr(train_module._EvalAndCheckpoint, "evaluate", original)
    result = train("Breakout", cfg, out=tmp_path / "run", resume=True)
    assert result.card.timesteps == TINY_STEPS
    rows = list(csv.DictReader((tmp_path / "run" / "eval.csv").open()))
    assert [int(r["timesteps"]) for r in rows] == [240]


def test_time_limit_stops_learning_and_finishes_the_run(
    tmp_path: Path, tiny_config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = resolve_train_config(yaml.safe_load(tiny_config_file.read_text()), game="Breakout")
    cfg.timesteps = 1_000_000
    caplog.set_level(logging.INFO, logger="sap_rl.progress")
    result = train("Breakout", cfg, out=tmp_path / "run", time_limit_s=1e-9)
    # the final games are reported one by one (no progress bar: not a terminal)
    progress = [r for r in caplog.records if r.name == "sap_rl.progress"]
    games = [r.getMessage().split(" scored ")[0] for r in progress]
    n = cfg.eval.final_episodes
    assert games == [f"final games: agent: game {i}/{n}" for i in range(1, n + 1)] + [
        f"final games: random policy: game {i}/{n}" for i in range(1, n + 1)
    ]
    # stopped at the first step, then the usual end: checkpoint, final games, agent folder
    assert 0 < result.timesteps < 10
    assert result.card.timesteps == result.timesteps
    assert result.card.clean_score.episodes == cfg.eval.final_episodes
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == result.timesteps
    net, _ = load_agent(result.agent_dir)
    assert isinstance(net, torch.nn.Module)


def test_interrupt_in_the_final_evaluation_resumes_to_the_agent(
    tmp_path: Path, tiny_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sap_rl.rl import train as train_module

    cfg = resolve_train_config(yaml.safe_load(tiny_config_file.read_text()), game="Breakout")
    cfg.timesteps, cfg.eval.freq = 120, 0
    original = train_module.random_score

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "random_score", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train("Breakout", cfg, out=tmp_path / "run")
    assert json.loads((tmp_path / "run/checkpoint/state.json").read_text())["timesteps"] == 120
    assert not (tmp_path / "run" / "agent").exists()

    monkeypatch.setattr(train_module, "random_score", original)
    result = train("Breakout", cfg, out=tmp_path / "run", resume=True)
    assert result.card.timesteps == 120
    assert (result.agent_dir / "model.safetensors").is_file()
    with pytest.raises(UserError, match="raise --timesteps"):
        train("Breakout", cfg, out=tmp_path / "run", resume=True)


@pytest.mark.parametrize("fast", [True, False])
def test_fast_kernels_choose_the_optimizer_and_layout(fast: bool) -> None:
    from sap_rl.rl.dqn import describe_optimizer
    from sap_rl.rl.games import resolve_game
    from sap_rl.rl.train import _build_model

    cfg = resolve_train_config({"default": {"dqn": {"fast_kernels": fast}}}, game="Breakout")
    env = make_vec_env("Breakout", 1, seed=0, training=True)
    try:
        model = _build_model(resolve_game("Breakout"), cfg, env, "cpu")
    finally:
        env.close()
    assert describe_optimizer(model.policy.optimizer) == (
        "Adam (torch, fused)" if fast else "Adam (torch, foreach)"
    )
    weight = model.policy.q_net.features_extractor.cnn[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == fast
