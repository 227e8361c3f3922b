"""Typed training configuration for ``sap-rl train`` and the preset files in ``configs/atari/``.

A preset file has a ``default`` block (a :class:`TrainConfig` mapping) and an optional ``games``
block of per-game overrides, deep-merged on top of ``default`` for the game being trained::

    default:
      timesteps: 10_000_000
      dqn: {learning_rate: 1.0e-4, buffer_size: 100_000, ...}
    games:
      Pong: {timesteps: 5_000_000}

A file without ``default``/``games`` is read as one flat :class:`TrainConfig` mapping. Unknown keys
and ill-typed or out-of-range values raise :class:`~sap_rl.errors.UserError` naming the key.

Example:
    >>> cfg = resolve_train_config({"default": {"timesteps": 1000}, "games": {"pong": {"seed": 3}}},
    ...                            game="Pong")
    >>> cfg.timesteps, cfg.seed, cfg.dqn.buffer_size
    (1000, 3, 100000)
    >>> resolve_train_config({"default": {"dqn": {"gama": 1}}}, game="Pong")
    Traceback (most recent call last):
    ...
    sap_rl.errors.UserError: unknown config key 'dqn.gama'; did you mean 'gamma'?
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sap_rl.config import deep_merge, from_dict, load_yaml
from sap_rl.errors import UserError
from sap_rl.rl.envs import AtariPreprocessing, VecEnvKind
from sap_rl.rl.games import resolve_game

#: Folder of the shipped presets (present in a source checkout / editable install).
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "atari"
DEFAULT_PRESET = "ddqn"


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ValueError(f"'{name}' must be > 0, got {value}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ValueError(f"'{name}' must be >= 0, got {value}")


def _fraction(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"'{name}' must be in [0, 1], got {value}")


@dataclass
class DQNConfig:
    """Hyperparameters passed to SB3's ``DQN`` / our ``DoubleDQN`` (same names as SB3).

    ``target_update_interval`` and ``train_freq`` count environment steps (SB3 convention);
    ``adam_eps`` is the optimiser's epsilon (``policy_kwargs.optimizer_kwargs.eps``).
    ``fast_kernels`` (Double DQN only) runs torch's fused Adam and channels-last convolutions:
    faster, with other rounding from the first update on; ``false`` gives SB3's own updates bit
    for bit (multi-tensor Adam, NCHW), which reproduces runs made before these kernels.
    """

    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    learning_starts: int = 100_000
    batch_size: int = 32
    tau: float = 1.0
    gamma: float = 0.99
    train_freq: int = 4
    gradient_steps: int = 1
    n_steps: int = 1
    target_update_interval: int = 1000
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.01
    max_grad_norm: float = 10.0
    adam_eps: float = 1e-8
    fast_kernels: bool = True

    def __post_init__(self) -> None:
        _positive(
            self, "learning_rate", "buffer_size", "batch_size", "train_freq", "gradient_steps",
            "n_steps", "target_update_interval", "max_grad_norm", "adam_eps",
        )  # fmt: skip
        _non_negative(self, "learning_starts")
        _fraction(
            self, "tau", "gamma", "exploration_fraction", "exploration_initial_eps",
            "exploration_final_eps",
        )  # fmt: skip
        if self.tau == 0.0:
            raise ValueError("'tau' must be > 0 (1.0 = hard target updates)")

    def sb3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the SB3 constructor (replay buffer chosen by the trainer)."""
        return {
            "learning_rate": self.learning_rate,
            "buffer_size": self.buffer_size,
            "learning_starts": self.learning_starts,
            "batch_size": self.batch_size,
            "tau": self.tau,
            "gamma": self.gamma,
            "train_freq": self.train_freq,
            "gradient_steps": self.gradient_steps,
            "target_update_interval": self.target_update_interval,
            "exploration_fraction": self.exploration_fraction,
            "exploration_initial_eps": self.exploration_initial_eps,
            "exploration_final_eps": self.exploration_final_eps,
            "max_grad_norm": self.max_grad_norm,
            "policy_kwargs": {"optimizer_kwargs": {"eps": self.adam_eps}},
        }


@dataclass
class TrainEvalConfig:
    """Evaluation on whole games with unclipped rewards (``training=False`` environments).

    ``freq`` counts environment steps between periodic evaluations (0 disables them);
    ``final_episodes`` games give the agent card's clean score (and, with the same seeds, the
    random-policy score). ``epsilon`` is the evaluation policy's random-action rate (0 = greedy).
    Evaluation seeds are ``seed + seed_offset + i`` so they never coincide with training seeds.
    """

    freq: int = 250_000
    episodes: int = 10
    final_episodes: int = 10
    n_envs: int = 5
    epsilon: float = 0.0
    seed_offset: int = 10_000

    def __post_init__(self) -> None:
        _non_negative(self, "freq", "seed_offset")
        _positive(self, "episodes", "final_episodes", "n_envs")
        _fraction(self, "epsilon")


@dataclass
class TrainConfig:
    """Everything ``sap-rl train`` needs besides the game and the output folder."""

    algorithm: Literal["DDQN", "DQN"] = "DDQN"
    timesteps: int = 10_000_000
    seed: int = 0
    n_envs: int = 1
    vec_env: VecEnvKind = "dummy"
    device: str = "auto"
    torch_threads: int = 0
    checkpoint_freq: int = 500_000
    progress_bar: bool = True
    dqn: DQNConfig = field(default_factory=DQNConfig)
    env: AtariPreprocessing = field(default_factory=AtariPreprocessing)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)

    def __post_init__(self) -> None:
        _positive(self, "timesteps", "n_envs")
        _non_negative(self, "seed", "torch_threads", "checkpoint_freq")
        if self.vec_env != "dummy" and self.env.backend == "ale_vector":
            raise ValueError(
                f"'vec_env: {self.vec_env}' needs 'env.backend: gymnasium' "
                "(ale_vector runs each game in its own C++ thread); drop one"
            )
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ValueError(
                f"'device' must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )


def preset_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A preset name (``ddqn``, ``ddqn_cpu``) or a YAML path -> an existing file path.

    Example:
        >>> preset_path("ddqn_cpu").name
        'ddqn_cpu.yaml'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if path.suffix == "" and candidate.is_file():
        return candidate
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    hint = f" (presets: {', '.join(presets)})" if presets else ""
    raise UserError(f"config file not found: {name_or_path}{hint}")


def resolve_train_config(
    data: Mapping[str, Any],
    *,
    game: str,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build the :class:`TrainConfig` for ``game`` from a preset or flat mapping plus overrides.

    Raises:
        UserError: unknown keys (naming them), bad values, or an unknown game in ``games``.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"a training config must be a mapping, got {type(data).__name__}")
    if "default" in data or "games" in data:
        extra = sorted(set(data) - {"default", "games"})
        if extra:
            raise UserError(
                f"unknown config key '{extra[0]}'; a preset file has only 'default' and 'games'"
            )
        merged: dict[str, Any] = dict(data.get("default") or {})
        games = data.get("games") or {}
        if not isinstance(games, Mapping):
            raise UserError("config key 'games': expected a mapping of game name -> overrides")
        wanted = resolve_game(game).name
        for name, block in games.items():
            try:
                resolved = resolve_game(str(name)).name
            except UserError as err:
                raise UserError(f"config key 'games.{name}': {err}") from None
            if resolved == wanted:
                if not isinstance(block, Mapping):
                    raise UserError(f"config key 'games.{name}': expected a mapping of overrides")
                merged = deep_merge(merged, block)
    else:
        merged = dict(data)
    if overrides:
        merged = deep_merge(merged, overrides)
    return from_dict(TrainConfig, merged)


def load_train_config(
    config: str | os.PathLike[str] | None,
    *,
    game: str,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Load a preset name / YAML file (``None``: the ``ddqn`` preset, if present) for ``game``.

    Example:
        >>> load_train_config("ddqn", game="Pong").dqn.learning_rate
        0.0001
    """
    if config is None:
        default = PRESET_DIR / f"{DEFAULT_PRESET}.yaml"
        data = load_yaml(default) if default.is_file() else {}
    else:
        path = preset_path(config)
        data = load_yaml(path)
        try:
            return resolve_train_config(data, game=game, overrides=overrides)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    return resolve_train_config(data, game=game, overrides=overrides)
