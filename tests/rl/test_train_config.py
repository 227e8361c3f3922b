"""Typed training configs: presets, per-game overrides and validation errors naming the key."""

from __future__ import annotations

from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from sap_rl.config import deep_merge
from sap_rl.errors import UserError
from sap_rl.rl.train_config import (
    PRESET_DIR,
    TrainConfig,
    load_train_config,
    resolve_train_config,
)


def test_default_preset_has_the_zoo_hyperparameters() -> None:
    cfg = load_train_config(None, game="Breakout")
    assert cfg == load_train_config("ddqn", game="Breakout")
    assert cfg.timesteps == 10_000_000
    d = cfg.dqn
    assert (d.buffer_size, d.learning_rate, d.learning_starts) == (100_000, 1e-4, 100_000)
    assert (d.target_update_interval, d.train_freq, d.batch_size) == (1000, 4, 32)
    assert (d.exploration_fraction, d.exploration_final_eps) == (0.1, 0.01)
    assert cfg.env.frame_stack == 4 and cfg.env.noop_max == 30 and cfg.env.frame_skip == 4
    assert cfg.algorithm == "DDQN"
    # the dataclass defaults are the same zoo values
    assert TrainConfig().dqn == d


def test_per_game_override_is_merged() -> None:
    assert load_train_config("ddqn", game="pong").timesteps == 4_000_000
    assert load_train_config("ddqn", game="Breakout").timesteps == 10_000_000


def test_cpu_preset_is_data_efficient() -> None:
    cfg = load_train_config("ddqn_cpu", game="RoadRunner")
    assert cfg.timesteps == 100_000
    assert cfg.dqn.n_steps > 1
    assert cfg.dqn.train_freq < 4  # higher replay ratio than the zoo's 1/4
    assert cfg.dqn.learning_starts < 10_000
    assert cfg.eval.final_episodes >= 10


def test_gpu_preset_steps_games_in_worker_processes() -> None:
    cfg = load_train_config("ddqn_gpu", game="Pong")
    assert (cfg.n_envs, cfg.vec_env) == (8, "subproc")
    # the zoo's replay ratio: gradient steps per environment step
    assert cfg.dqn.gradient_steps / (cfg.dqn.train_freq * cfg.n_envs) == 0.25
    assert load_train_config("ddqn", game="Pong").vec_env == "dummy"


def test_every_shipped_preset_loads_for_every_listed_game() -> None:
    import yaml

    presets = sorted(PRESET_DIR.glob("*.yaml"))
    # An empty glob (a moved folder) would make the loop below pass without checking anything.
    assert {"ddqn", "ddqn_cpu", "ddqn_gpu"} <= {path.stem for path in presets}
    for path in presets:
        data = yaml.safe_load(path.read_text())
        games = data.get("games") or {}
        for game in [*games, "Pong"]:
            cfg = load_train_config(path, game=game)
            # every value the preset sets for this game is the one the config holds
            for keys, value in _leaves(deep_merge(data["default"], games.get(game) or {})):
                assert reduce(getattr, keys, cfg) == value, (path.name, game, keys)


def _leaves(
    block: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in block.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def test_overrides_win() -> None:
    cfg = load_train_config("ddqn", game="Pong", overrides={"timesteps": 5, "seed": 3})
    assert (cfg.timesteps, cfg.seed) == (5, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"default": {"timestep": 10}}, "unknown config key 'timestep'; did you mean 'timesteps'"),
        ({"default": {"dqn": {"lerning_rate": 1.0}}}, "unknown config key 'dqn.lerning_rate'"),
        ({"default": {"eval": {"episode": 3}}}, "unknown config key 'eval.episode'"),
        ({"default": {"dqn": {"gamma": "high"}}}, "config key 'dqn.gamma': expected float"),
        ({"default": {"timesteps": -5}}, "'timesteps' must be > 0"),
        ({"default": {"dqn": {"gamma": 1.5}}}, "'gamma' must be in \\[0, 1\\]"),
        ({"default": {"dqn": {"buffer_size": 0}}}, "'buffer_size' must be > 0"),
        ({"default": {"eval": {"epsilon": -0.1}}}, "'epsilon' must be in \\[0, 1\\]"),
        ({"default": {"env": {"frame_skip": 0}}}, "'frame_skip' must be >= 1"),
        ({"default": {"algorithm": "PPO"}}, "config key 'algorithm': expected one of"),
        ({"default": {"device": "tpu"}}, "'device' must be"),
        ({"default": {}, "extra": 1}, "unknown config key 'extra'"),
        ({"games": {"Pnog": {"seed": 1}}}, "config key 'games.Pnog': unknown game"),
        ({"games": {"Pong": 3}}, "games.Pong': expected a mapping"),
        ({"timesteps": True}, "config key 'timesteps': expected int"),
        ({"default": {"dqn": {"fast_kernels": "no"}}}, "'dqn.fast_kernels': expected bool"),
    ],
)
def test_bad_configs_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        resolve_train_config(data, game="Pong")
    assert "\n" not in str(err.value)


def test_flat_config_file_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("timesteps: 1000\ndqn:\n  n_steps: 3\n")
    cfg = load_train_config(path, game="Pong")
    assert (cfg.timesteps, cfg.dqn.n_steps) == (1000, 3)
    path.write_text("dqn:\n  n_step: 3\n")
    with pytest.raises(UserError, match=r"mine\.yaml: unknown config key 'dqn\.n_step'"):
        load_train_config(path, game="Pong")
    with pytest.raises(
        UserError, match=r"config file not found.*presets: ddqn, ddqn_cpu, ddqn_cpu_long, ddqn_gpu"
    ):
        load_train_config(tmp_path / "missing.yaml", game="Pong")
    with pytest.raises(UserError, match="config file not found"):
        load_train_config("ddqn_tpu", game="Pong")
