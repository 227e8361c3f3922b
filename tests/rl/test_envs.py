"""Environment contract on the real ALE: shapes, whole games, determinism, the length cap."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import numpy as np
import pytest
import torch

from sap_rl.errors import UserError
from sap_rl.rl.envs import AtariPreprocessing, make_env, make_vec_env, n_actions, obs_to_tensor
from sap_rl.rl.play import game_progress, make_eval_envs, play_matched_games, random_policy


def _noop(obs: np.ndarray, games: Any) -> np.ndarray:
    return np.zeros(len(obs), dtype=np.int64)


@pytest.mark.parametrize("training", [True, False])
def test_single_env_observation_shape_and_dtype(training: bool) -> None:
    env = make_env("Pong", seed=0, training=training)
    obs, _ = env.reset()
    assert obs.shape == (4, 84, 84)
    assert obs.dtype == np.uint8
    assert env.observation_space.shape == (4, 84, 84)
    assert env.observation_space.dtype == np.uint8
    obs, *_ = env.step(0)
    assert obs.shape == (4, 84, 84)
    assert obs.dtype == np.uint8
    env.close()


def test_vec_env_observations_and_tensor_layout() -> None:
    venv = make_vec_env("Breakout", 3, seed=1, training=False)
    obs = venv.reset()
    assert obs.shape == (3, 4, 84, 84)
    assert obs.dtype == np.uint8
    obs, _, _, _ = venv.step(np.zeros(3, dtype=np.int64))
    batch = obs_to_tensor(obs)
    assert batch.shape == (3, 4, 84, 84)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.from_numpy(obs).float())  # pixel units, no rescaling
    assert obs_to_tensor(obs[0]).shape == (1, 4, 84, 84)
    # the newest frame is last; after a reset the older frames are zero padding
    first = make_vec_env("Breakout", 1, seed=1, training=False).reset()
    assert first[0, :3].max() == 0
    assert first[0, 3].max() > 0
    venv.close()


def test_frame_stack_shifts_by_one_frame() -> None:
    env = make_env("Breakout", seed=2, training=True)
    obs, _ = env.reset()
    for _ in range(5):
        nxt, *_ = env.step(env.action_space.sample())
        np.testing.assert_array_equal(nxt[:3], obs[1:])
        obs = nxt
    env.close()


def _play_actions(game: str, training: bool, actions: np.ndarray) -> tuple[dict[str, Any], int]:
    """Play a fixed action sequence until the whole game ends; return its stats and #episodes."""
    env = make_env(game, seed=11, training=training)
    env.reset()
    episodes = 0
    clipped = []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(int(action))
        clipped.append(reward)
        if terminated or truncated:
            episodes += 1
            if "episode" in info:
                env.close()
                return {**info["episode"], "reward_sum": float(np.sum(clipped))}, episodes
            env.reset()
    raise AssertionError("game did not end")


def test_whole_game_accounting_with_episodic_life() -> None:
    actions = np.random.default_rng(0).integers(6, size=20_000)
    train_game, train_episodes = _play_actions("SpaceInvaders", True, actions)
    eval_game, eval_episodes = _play_actions("SpaceInvaders", False, actions)
    # Training: one episode per life (3 lives), clipped rewards; evaluation: one episode per game.
    assert train_episodes == 3
    assert eval_episodes == 1
    # The whole-game record is the same game in both: unclipped score, same length.
    assert train_game["r"] == eval_game["r"] == eval_game["reward_sum"]
    assert train_game["l"] == eval_game["l"]
    assert train_game["reward_sum"] < train_game["r"]  # invaders are worth 5-30 points
    assert train_game["truncated"] is False


def test_eval_games_cannot_stall_waiting_to_fire() -> None:
    # A policy that never presses FIRE still finishes Breakout games (the life-loss fire).
    games = play_matched_games(make_eval_envs("Breakout", 2), _noop, 2, seed=0)
    assert all(g.length < 2000 and not g.truncated for g in games)


def test_matched_games_are_deterministic_whatever_the_env_count() -> None:
    def run(n_envs: int) -> list[Any]:
        return play_matched_games(make_eval_envs("Breakout", n_envs), random_policy(4, seed=0), 5,
                                  seed=5)  # fmt: skip

    first = run(3)
    assert first == run(3) == run(2)
    assert [(g.episode, g.seed) for g in first] == [(g, 5 + g) for g in range(5)]
    with pytest.raises(UserError):
        play_matched_games(make_eval_envs("Breakout", 1), random_policy(4, seed=0), 0, seed=0)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the progress bar is drawn into it."""

    def isatty(self) -> bool:
        return True


def test_matched_games_report_every_game_to_the_progress_hook(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def play(on_game: Any) -> list[Any]:
        return play_matched_games(make_eval_envs("Breakout", 2), random_policy(4, seed=0), 3,
                                  seed=5, on_game=on_game)  # fmt: skip

    # not a terminal (pytest captures stderr): one INFO line per game, in finishing order
    caplog.set_level(logging.INFO, logger="sap_rl.progress")
    reported: list[Any] = []
    with game_progress(3, "demo") as log_game:
        games = play(lambda game: (reported.append(game), log_game(game)))
    assert sorted(reported, key=lambda g: g.reward) == sorted(games, key=lambda g: g.reward)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" scored ")[0] for line in lines] == [f"demo: game {i}/3" for i in (1, 2, 3)]
    assert lines[0] == f"demo: game 1/3 scored {reported[0].reward:g} in {reported[0].length} steps"
    # a terminal: a tqdm bar over games, and no log lines
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.clear()
    with game_progress(3, "demo") as on_game:
        assert play(on_game) == games
    assert "demo: 100%" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert not caplog.records
    # bar=False (--no-progress) logs even on a terminal
    with game_progress(1, "quiet", bar=False) as on_game:
        on_game(games[0])
    assert [r.getMessage().split(" scored ")[0] for r in caplog.records] == ["quiet: game 1/1"]


def test_episode_length_cap_truncates_whole_games() -> None:
    cap = AtariPreprocessing(max_episode_frames=400, noop_max=0)
    games = play_matched_games(make_eval_envs("Pong", 1, cap), _noop, 1, seed=0)
    assert games[0].truncated
    assert games[0].length == 400 // 4


def test_action_counts_and_bad_arguments() -> None:
    assert n_actions("Pong") == 6
    assert n_actions("Breakout") == 4
    with pytest.raises(UserError):
        make_vec_env("Pong", 0, seed=0, training=True)
    with pytest.raises(UserError, match="did you mean Pong"):
        make_env("Pnog", training=True)
    with pytest.raises(ValueError, match="frame_skip"):
        AtariPreprocessing(frame_skip=0)


def test_subproc_vec_env_steps_the_same_games_as_dummy() -> None:
    actions = np.random.default_rng(5).integers(4, size=(40, 2))
    runs = []
    for kind in ("dummy", "subproc"):
        venv = make_vec_env("Breakout", 2, seed=11, training=True, vec_env=kind)
        frames, rewards = [venv.reset()], []
        for step in actions:
            obs, reward, _, _ = venv.step(step)
            frames.append(obs)
            rewards.append(reward)
        venv.close()
        runs.append((np.stack(frames), np.stack(rewards)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    with pytest.raises(UserError, match="vec_env must be one of dummy, subproc"):
        make_vec_env("Breakout", 1, seed=0, training=True, vec_env="threads")  # type: ignore[arg-type]
