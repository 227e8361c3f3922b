"""Tests of the strict typed config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from sap_rl.config import deep_merge, from_dict, load_config, save_config, to_dict
from sap_rl.errors import UserError


@dataclass
class Schedule:
    start: float = 1.0
    end: float = 0.01


@dataclass
class TrainConfig:
    game: str = "Pong"
    timesteps: int = 1000
    lr: float = 1e-4
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eps: list[float] = field(default_factory=lambda: [0.0, 1.0])
    seed: int | None = None
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        if self.timesteps <= 0:
            raise ValueError(f"timesteps must be > 0, got {self.timesteps}")


def test_defaults_nested_and_coercion() -> None:
    cfg = from_dict(TrainConfig, {"lr": 1, "timesteps": 2e3, "schedule": {"end": 0.1}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.timesteps == 2000 and isinstance(cfg.timesteps, int)
    assert cfg.schedule == Schedule(1.0, 0.1)
    assert from_dict(TrainConfig, None) == TrainConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"learning_rate": 1e-3}, "unknown config key 'learning_rate'"),
        ({"lr": "fast"}, "config key 'lr': expected float"),
        ({"timesteps": 1.5}, "config key 'timesteps': expected int"),
        ({"timesteps": True}, "config key 'timesteps': expected int"),
        ({"device": "tpu"}, "config key 'device': expected one of"),
        ({"eps": [0, "x"]}, r"config key 'eps\[1\]'"),
        ({"schedule": {"stop": 1}}, "unknown config key 'schedule.stop'"),
        ({"schedule": 3}, "expected a mapping"),
        ({"timesteps": -5}, "timesteps must be > 0"),
        ({"seeed": 1}, "did you mean 'seed'"),
    ],
)
def test_bad_configs_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_dict(TrainConfig, data)


def test_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("game: Breakout\nschedule:\n  end: 0.05\n")
    cfg = load_config(TrainConfig, path, overrides={"schedule": {"start": 0.5}})
    assert cfg.game == "Breakout" and cfg.schedule == Schedule(0.5, 0.05)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TrainConfig, tmp_path / "resolved.yaml") == cfg
    assert to_dict(cfg)["schedule"] == {"start": 0.5, "end": 0.05}


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("game: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a YAML mapping"):
        load_config(TrainConfig, listing)


def test_deep_merge_does_not_modify_inputs() -> None:
    base = {"a": {"x": 1}, "b": 2}
    merged = deep_merge(base, {"a": {"y": 3}})
    assert merged == {"a": {"x": 1, "y": 3}, "b": 2} and base == {"a": {"x": 1}, "b": 2}
