"""Atari environments with the standard DQN preprocessing, for training and for evaluation.

Contract (relied on by the trainer and by the evaluator)
--------------------------------------------------------
Construction
    ``make_env(game, seed=..., training=...)`` returns one gymnasium env;
    ``make_vec_env(game, n_envs, seed=..., training=...)`` returns a stable-baselines3 ``VecEnv``
    (``DummyVecEnv``) of ``n_envs`` such envs, env ``i`` seeded with ``seed + i`` at its first
    reset.
    The ALE runs with ``frameskip=1``, ``repeat_action_probability=0.0`` (no sticky actions, v4
    semantics), the minimal action set and grey-scale frames. On top of it, in this order:
    noop reset (1-30 random no-ops), frame skip 4 with a max-pool over the last two frames,
    a whole-game monitor, [episodic life: training only | life-loss fire: evaluation only],
    fire reset (games whose action 1 is FIRE), resize to 84x84 (``cv2.INTER_AREA``),
    [reward clipping to {-1, 0, 1}: training only], then a stack of the last 4 frames
    (zero-padded after a reset).

    Life-loss fire: in training, a lost life ends the episode and the next reset presses NOOP,
    FIRE, then action 2 (SB3's ``EpisodicLifeEnv`` + ``FireResetEnv``), so an agent never learns
    to launch the ball itself. Evaluation envs of FIRE games replay the same three presses right
    after a lost life, inside the same step and without ending the game (their rewards and steps
    count towards the game), so a greedy agent cannot stall for 27,000 steps waiting to serve.

Observations
    ``uint8`` in ``[0, 255]``, **channels first**: ``(4, 84, 84)`` for one env and
    ``(n_envs, 4, 84, 84)`` for a vector env, oldest frame first. :func:`obs_to_tensor` turns either
    into the Q-network's float32 ``(B, 4, 84, 84)`` batch in pixel units (no division by 255: the
    network does that itself).

Episodes and whole games
    With ``training=False`` an episode **is** a whole game: ``done`` in a vector env (or
    ``terminated or truncated`` in a single env) means the game is over, rewards are the raw,
    unclipped game score. With ``training=True`` a lost life ends the episode (episodic life) and
    rewards are clipped, but the game itself only restarts at game over.
    In both modes, the step that ends a whole game carries ``info["episode"] = {"r": return,
    "l": length, "t": seconds, "truncated": bool}`` where ``r`` is the **unclipped** score of the
    whole game, ``l`` its length in agent steps (4 frames each, fire-reset steps included, no-op
    starts excluded) and ``truncated`` says the game hit the length cap. Games are capped at
    ``max_episode_frames = 108_000`` emulator frames (27,000 agent steps, 30 minutes of play), so a
    stuck agent cannot hang an evaluation. :func:`sap_rl.rl.play.play_matched_games` counts whole
    games this way.

Determinism
    Given the seed, observations, rewards and game ends are fully deterministic (the ALE is
    deterministic without sticky actions; the no-op counts come from the env's seeded generator).

Example:
    >>> venv = make_vec_env("Pong", 2, seed=0, training=False)
    >>> obs = venv.reset()
    >>> obs.shape, obs.dtype
    ((2, 4, 84, 84), dtype('uint8'))
    >>> obs_to_tensor(obs).shape
    torch.Size([2, 4, 84, 84])
    >>> venv.close()
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sap_rl.errors import UserError
from sap_rl.rl.games import Game, resolve_game

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

logger = logging.getLogger(__name__)

FRAME_STACK = 4
SCREEN_SIZE = 84
MAX_EPISODE_FRAMES = 108_000

#: How :func:`make_vec_env` steps its games: in this process or one process per game.
VecEnvKind = Literal["dummy", "subproc"]
VEC_ENV_KINDS: tuple[str, ...] = get_args(VecEnvKind)

#: What emulates and preprocesses the games: the gymnasium/SB3 wrapper stack of this module (the
#: reference) or ale-py's C++ ``AtariVectorEnv``, same semantics (:mod:`sap_rl.rl.ale_vector`).
EnvBackend = Literal["gymnasium", "ale_vector"]
ENV_BACKENDS: tuple[str, ...] = get_args(EnvBackend)
DEFAULT_ENV_BACKEND: EnvBackend = "gymnasium"


@dataclass
class AtariPreprocessing:
    """Preprocessing settings (the defaults are the standard DQN ones; change them knowingly).

    ``terminal_on_life_loss`` and ``clip_reward`` apply to training environments only;
    evaluation environments always play whole games with raw rewards. ``backend`` chooses what
    runs the games (:data:`EnvBackend`); both give the same pixels and games (docs/training.md).
    """

    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = SCREEN_SIZE
    frame_stack: int = FRAME_STACK
    terminal_on_life_loss: bool = True
    clip_reward: bool = True
    max_episode_frames: int = MAX_EPISODE_FRAMES
    backend: EnvBackend = "gymnasium"

    def __post_init__(self) -> None:
        check_env_backend(self.backend)
        for name in ("frame_skip", "screen_size", "frame_stack", "max_episode_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1, got {getattr(self, name)}")
        if self.noop_max < 0:
            raise ValueError(f"'noop_max' must be >= 0, got {self.noop_max}")

    def describe(self, game: Game | str) -> dict[str, Any]:
        """The wrapper settings as written into an agent card's ``wrappers`` block."""
        game = resolve_game(game) if isinstance(game, str) else game
        return {
            **dataclasses.asdict(self),
            "frameskip_ale": 1,
            "repeat_action_probability": 0.0,
            "full_action_space": False,
            "obs_type": "grayscale",
            "max_pool": True,
            "fire_reset": needs_fire_reset(game),
            "eval_fire_on_life_loss": needs_fire_reset(game) and self.terminal_on_life_loss,
            "layout": "NCHW uint8 (n, 4, 84, 84)",
            "frame_stack_padding": "zero",
        }


def check_env_backend(backend: str, flag: str = "env.backend") -> str:
    """``backend`` if it is one of :data:`ENV_BACKENDS`, else a one-line :class:`UserError`.

    Example:
        >>> check_env_backend("ale_vector")
        'ale_vector'
    """
    if backend not in ENV_BACKENDS:
        raise UserError(f"{flag} must be one of {', '.join(ENV_BACKENDS)}, got {backend!r}")
    return backend


def _register() -> None:
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr
    gym.register_envs(ale_py)


def _ale_env(env: gym.Env) -> Any:
    """The underlying ``ale_py`` ``AtariEnv`` (typed ``Any``: ale-py ships no type hints)."""
    return env.unwrapped


def _as_game(game: Game | str) -> Game:
    return game if isinstance(game, Game) else resolve_game(game)


def _raw_env(game: Game, max_episode_frames: int) -> gym.Env:
    _register()
    return gym.make(
        game.env_id,
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        obs_type="grayscale",
        max_num_frames_per_episode=max_episode_frames,
    )


def action_meanings(game: Game | str) -> list[str]:
    """Names of the game's minimal action set, e.g. ``['NOOP', 'FIRE', 'RIGHT', ...]``.

    Example:
        >>> action_meanings("Pong")[:2]
        ['NOOP', 'FIRE']
    """
    return list(_action_meanings(_as_game(game).env_id))


@functools.cache
def _action_meanings(env_id: str) -> tuple[str, ...]:
    env = _raw_env(resolve_game(env_id), MAX_EPISODE_FRAMES)
    try:
        return tuple(_ale_env(env).get_action_meanings())
    finally:
        env.close()


def n_actions(game: Game | str) -> int:
    """Size of the game's minimal action set (the Q-network's output width).

    Example:
        >>> n_actions("Breakout")
        4
    """
    return len(action_meanings(game))


def needs_fire_reset(game: Game | str) -> bool:
    """Whether the fire-reset wrapper applies (action 1 is FIRE and there are >= 3 actions)."""
    meanings = action_meanings(game)
    return len(meanings) >= 3 and meanings[1] == "FIRE"


class GameMonitor(Monitor):
    """SB3 ``Monitor`` that also records whether the whole game hit the length cap."""

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if "episode" in info:
            info["episode"]["truncated"] = bool(truncated and not terminated)
        return obs, reward, terminated, truncated, info


class FireOnLifeLoss(gym.Wrapper):
    """Evaluation twin of training's episodic-life reset: after a lost life press NOOP, FIRE, 2.

    The presses happen inside the step that lost the life (rewards summed), the game goes on.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0

    def reset(self, **kwargs: Any) -> Any:
        out = self.env.reset(**kwargs)
        self.lives = _ale_env(self.env).ale.lives()
        return out

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        total = float(reward)
        lives = _ale_env(self.env).ale.lives()
        if not (terminated or truncated) and 0 < lives < self.lives:
            for press in (0, 1, 2):
                obs, reward, terminated, truncated, info = self.env.step(press)
                total += float(reward)
                if terminated or truncated:
                    break
            lives = _ale_env(self.env).ale.lives()
        self.lives = lives
        return obs, total, terminated, truncated, info


class Resize(gym.ObservationWrapper):
    """Resize a grey ``(210, 160)`` frame to ``(size, size)`` uint8 with area interpolation."""

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        self.size = size
        self.observation_space = spaces.Box(0, 255, (size, size), dtype=np.uint8)

    def observation(self, frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)


class SeedOnFirstReset(gym.Wrapper):
    """Use ``seed`` for the first ``reset()`` that does not pass one (and seed the action space)."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        self._pending_seed: int | None = seed
        env.action_space.seed(seed)

    def reset(self, **kwargs: Any) -> Any:
        if self._pending_seed is not None and kwargs.get("seed") is None:
            kwargs["seed"] = self._pending_seed
        self._pending_seed = None
        return self.env.reset(**kwargs)


def make_env(
    game: Game | str,
    *,
    seed: int | None = None,
    training: bool,
    preprocessing: AtariPreprocessing | None = None,
) -> gym.Env:
    """One preprocessed Atari env (see the module docstring for the exact contract).

    Args:
        game: game name (``"Pong"``, case-insensitive) or a resolved :class:`Game`.
        seed: if given, the first ``reset()`` uses it (later resets continue the seeded stream).
        training: ``True`` adds episodic life and reward clipping; ``False`` plays whole games
            with raw scores.
        preprocessing: wrapper settings; ``None`` means the standard DQN ones.

    Returns:
        A gymnasium env with ``uint8`` observations of shape ``(4, 84, 84)``.

    Example:
        >>> env = make_env("Breakout", seed=1, training=True)
        >>> obs, info = env.reset()
        >>> obs.shape
        (4, 84, 84)
        >>> env.close()
    """
    cfg = preprocessing or AtariPreprocessing()
    resolved = _as_game(game)
    env = _raw_env(resolved, cfg.max_episode_frames)
    if cfg.noop_max > 0:
        env = NoopResetEnv(env, noop_max=cfg.noop_max)
    if cfg.frame_skip > 1:
        env = MaxAndSkipEnv(env, skip=cfg.frame_skip)
    env = GameMonitor(env)
    meanings = _ale_env(env).get_action_meanings()
    fire = len(meanings) >= 3 and meanings[1] == "FIRE"
    if training and cfg.terminal_on_life_loss:
        env = EpisodicLifeEnv(env)
    elif not training and fire and cfg.terminal_on_life_loss:
        env = FireOnLifeLoss(env)
    if fire:
        env = FireResetEnv(env)
    env = Resize(env, cfg.screen_size)
    if training and cfg.clip_reward:
        env = ClipRewardEnv(env)
    env = gym.wrappers.FrameStackObservation(env, cfg.frame_stack, padding_type="zero")
    if seed is not None:
        env = SeedOnFirstReset(env, seed)
    return env


def make_vec_env(
    game: Game | str,
    n_envs: int = 1,
    *,
    seed: int,
    training: bool,
    preprocessing: AtariPreprocessing | None = None,
    vec_env: VecEnvKind = "dummy",
) -> VecEnv:
    """A vectorized env of ``n_envs`` preprocessed envs; env ``i`` is seeded with ``seed + i``.

    ``vec_env="dummy"`` (SB3's ``DummyVecEnv``) steps the games one after another in this process;
    ``"subproc"`` (``SubprocVecEnv``) steps each game in its own process, which pays off on a
    machine with a spare core per game (a GPU training machine), not on a 2-core CPU. With
    ``preprocessing.backend == "ale_vector"`` the games run on ale-py's ``AtariVectorEnv``
    (:class:`sap_rl.rl.ale_vector.AleVecEnv`, same observations and episodes).

    Auto-reset follows SB3: when env ``i`` is done, the returned observation is already the first
    one of its next episode and the last one is in ``infos[i]["terminal_observation"]``.

    Args:
        game: game name or resolved :class:`Game`.
        n_envs: number of parallel environments (>= 1).
        seed: base seed.
        training: see :func:`make_env`.
        preprocessing: wrapper settings; ``None`` means the standard DQN ones.
        vec_env: ``"dummy"`` or ``"subproc"``.

    Example:
        >>> venv = make_vec_env("Freeway", 3, seed=7, training=True)
        >>> venv.reset().shape
        (3, 4, 84, 84)
        >>> venv.close()
    """
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise UserError(f"n_envs must be a positive integer, got {n_envs!r}")
    resolved = _as_game(game)
    if preprocessing is not None and preprocessing.backend == "ale_vector":
        if vec_env != "dummy":
            raise UserError(f"vec_env {vec_env!r} needs env.backend gymnasium (ale_vector runs "
                            "each game in its own C++ thread); drop one of the two")  # fmt: skip
        from sap_rl.rl.ale_vector import AleVecEnv

        return AleVecEnv(resolved, n_envs, seed=seed, training=training,
                         preprocessing=preprocessing)  # fmt: skip

    def factory(rank: int) -> Callable[[], gym.Env]:
        def build() -> gym.Env:
            return make_env(resolved, seed=None, training=training, preprocessing=preprocessing)

        return build

    if vec_env not in VEC_ENV_KINDS:
        raise UserError(f"vec_env must be one of {', '.join(VEC_ENV_KINDS)}, got {vec_env!r}")
    factories = [factory(i) for i in range(n_envs)]
    venv: VecEnv = DummyVecEnv(factories) if vec_env == "dummy" else SubprocVecEnv(factories)
    venv.seed(seed)
    if isinstance(venv, DummyVecEnv):  # a SubprocVecEnv's spaces live in the worker processes
        for i, action_space in enumerate(venv.get_attr("action_space")):
            action_space.seed(seed + i)
    return venv


def obs_to_tensor(obs: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Convert observations to the Q-network input: float32 ``(B, 4, 84, 84)`` in ``[0, 255]``.

    Accepts one observation ``(4, 84, 84)`` or a batch ``(B, 4, 84, 84)``.

    Example:
        >>> import numpy as np
        >>> obs_to_tensor(np.zeros((4, 84, 84), np.uint8)).shape
        torch.Size([1, 4, 84, 84])
    """
    array = np.asarray(obs)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(
            f"expected (B, C, H, W) or (C, H, W) observations, got shape {array.shape}"
        )
    return torch.as_tensor(array, device=device).to(torch.float32)
