"""Playing whole Atari games: the one play loop, game record and policy type of sap-rl.

The study (``sap-rl evaluate``), training's periodic and final evaluation and ``sap-rl score``
all play games here, with :func:`play_matched_games`, :class:`GameRecord` and :data:`GamePolicy`.

Matched games
    Game ``g`` is played on an environment reset with seed ``seed + g``, whichever parallel
    environment slot plays it, so every cell of an evaluation plays the same games and cells
    differ only by defense and attack. Exactly the asked games are collected (no bias toward
    short games).
Policies
    A :data:`GamePolicy` gets the observations of all running games in one batch, with their game
    indices: per-game random streams (epsilon-greedy exploration, the random policy) are seeded by
    ``(seed, g)``, so a game's actions do not depend on which other games run beside it.

Example:
    >>> envs = [make_env("Pong", training=False, preprocessing=preprocessing_for(30))]
    >>> [g.seed for g in play_matched_games(envs, random_policy(6, seed=0), 2, seed=5)]
    [5, 6]
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.rl.envs import (
    DEFAULT_ENV_BACKEND,
    AtariPreprocessing,
    EnvBackend,
    make_env,
    obs_to_tensor,
)
from sap_rl.rl.games import Game
from sap_rl.rl.perturb import ObservationAttack, PerturbObservation

__all__ = [
    "GamePolicy",
    "GameRecord",
    "PlayState",
    "ResumeError",
    "agent_policy",
    "game_progress",
    "greedy_policy",
    "make_eval_envs",
    "play_matched_games",
    "play_wrapped",
    "preprocessing_for",
    "random_policy",
]

#: Per-game progress lines; the command line shows them at its default log level (sap_rl.cli).
progress_logger = logging.getLogger("sap_rl.progress")

#: ``(n, 4, 84, 84)`` uint8 observations of the active games and their game indices -> actions.
GamePolicy = Callable[[np.ndarray, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class GameRecord:
    """One whole game: index, env seed, unclipped score, length in agent steps, capped or not."""

    episode: int
    seed: int
    reward: float
    length: int
    truncated: bool = False


class ResumeError(ValueError):
    """A saved state that does not continue these games (other settings, a damaged file, an
    emulator that replays differently)."""


@dataclass
class PlayState:
    """Where :func:`play_matched_games` stands between two steps: enough to continue it exactly.

    The envs are not saved: a running game is rebuilt by resetting its env with the game's seed
    and replaying its actions (the emulator and its sticky actions are seeded by the reset), and
    checked against the digest of the frames it had reached.

    Attributes:
        next_game: the next game to start.
        playing: per env slot, the game it plays (``None``: idle).
        actions: per running game, its actions so far.
        records: the finished games.
        digests: per running game, :func:`frame_digest` of the observation its actions lead to
            (a saved state's, checked when it is resumed; :meth:`running_digests` gives the live
            ones).
        observations: per env slot, its current observation (live, while playing).
    """

    next_game: int
    playing: list[int | None]
    actions: dict[int, list[int]]
    records: dict[int, GameRecord]
    digests: dict[int, str] = field(default_factory=dict)
    observations: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def running_digests(self) -> dict[int, str]:
        """:func:`frame_digest` of each running game's current observation."""
        return {g: frame_digest(self.observations[slot])
                for slot, g in enumerate(self.playing) if g is not None}  # fmt: skip

    def check(self, n_envs: int, first: int, n_games: int) -> None:
        """Raise :class:`ResumeError` unless this is a state of ``n_games`` games from ``first``
        on ``n_envs`` envs."""
        running = [g for g in self.playing if g is not None]
        known = set(running) | set(self.records)
        if (len(self.playing) != n_envs or len(set(running)) != len(running)
                or set(running) != set(self.actions)
                or not known <= set(range(first, first + n_games))
                or not first <= self.next_game <= first + n_games):  # fmt: skip
            raise ResumeError("the state to resume is not one of these games")


def frame_digest(observation: np.ndarray) -> str:
    """A short digest of an observation's bytes (a replayed game must reach the same frames).

    Example:
        >>> frame_digest(np.zeros((4, 84, 84), np.uint8))
        '58addadd982be004'
    """
    return hashlib.sha256(np.ascontiguousarray(observation).tobytes()).hexdigest()[:16]


def agent_policy(
    attack: ObservationAttack,
    *,
    device: str | torch.device = "cpu",
    epsilon: float = 0.0,
    seed: int = 0,
    rngs: dict[int, np.random.Generator] | None = None,
) -> GamePolicy:
    """The defended agent under attack as a :data:`GamePolicy` (batched; epsilon-greedy).

    All active games are attacked in one forward/backward pass (:meth:`ObservationAttack.act`).
    With ``epsilon > 0`` game ``g`` explores with its own generator seeded by ``(seed, g)``, kept
    in ``rngs`` (pass a dict to save or restore their states).

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> policy = agent_policy(ObservationAttack(QNetwork(6), "fgsm", 1.0))
        >>> policy(np.zeros((2, 4, 84, 84), np.uint8), [0, 1]).shape
        (2,)
    """
    rngs = {} if rngs is None else rngs

    def act(obs: np.ndarray, games: Sequence[int]) -> np.ndarray:
        actions, _ = attack.act(obs_to_tensor(obs, device), games)
        chosen: np.ndarray = actions.cpu().numpy()
        if epsilon > 0:
            n_actions = int(attack.q_values(obs_to_tensor(obs[:1], device)).shape[1])
            for row, g in enumerate(games):
                rng = rngs.setdefault(g, np.random.default_rng([seed, g]))
                if rng.random() < epsilon:
                    chosen[row] = rng.integers(n_actions)
        return chosen

    return act


def greedy_policy(
    q_net: nn.Module,
    *,
    device: str | torch.device = "cpu",
    epsilon: float = 0.0,
    seed: int = 0,
) -> GamePolicy:
    """The (epsilon-)greedy policy of a Q-network, unattacked: :func:`agent_policy` of clean play.

    ``q_net`` takes a float ``(B, 4, 84, 84)`` pixel batch (a :class:`~sap_rl.rl.agent.QNetwork`
    or stable-baselines3's ``q_net``, which divides by 255 itself).

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> greedy_policy(QNetwork(6))(np.zeros((2, 4, 84, 84), np.uint8), [0, 1]).shape
        (2,)
    """
    return agent_policy(ObservationAttack(q_net, None, 0.0), device=device, epsilon=epsilon,
                        seed=seed)  # fmt: skip


def random_policy(n_actions: int, *, seed: int) -> GamePolicy:
    """Uniform random actions, game ``g`` drawing from a generator seeded by ``(seed, g)``.

    Example:
        >>> random_policy(4, seed=0)(np.zeros((3, 4, 84, 84), np.uint8), [0, 1, 2]).shape
        (3,)
    """
    rngs: dict[int, np.random.Generator] = {}

    def act(obs: np.ndarray, games: Sequence[int]) -> np.ndarray:
        del obs
        return np.array(
            [rngs.setdefault(g, np.random.default_rng([seed, g, 1])).integers(n_actions)
             for g in games]
        )  # fmt: skip

    return act


def play_matched_games(
    envs: Sequence[gym.Env],
    policy: GamePolicy,
    n_games: int,
    *,
    seed: int,
    first: int = 0,
    on_game: Callable[[GameRecord], None] | None = None,
    resume: PlayState | None = None,
    on_step: Callable[[PlayState], None] | None = None,
) -> list[GameRecord]:
    """Play games ``first .. first+n_games-1`` on parallel envs; game ``g`` starts with seed
    ``seed + g``.

    Each env slot takes the next unplayed game when its game ends, so which slot plays a game
    never changes the game. Every step, the policy gets the observations of all running games in
    one batch. ``envs`` must be evaluation envs (:func:`sap_rl.rl.envs.make_env` with
    ``training=False``): a game ends with ``info["episode"]``.

    Args:
        envs: evaluation envs, one per game played at once (all of them busy while enough games
            are left).
        policy: the batched policy.
        n_games: games to play (>= 1).
        seed: game ``g`` starts from an env reset with seed ``seed + g``.
        first: index of the first game (a unit of a cell plays games ``first ..``).
        on_game: called with each game as it finishes (in finishing order), e.g. the callback of
            :func:`game_progress`.
        resume: continue from this state (one that ``on_step`` got from a call with the same
            arguments): its running games are replayed (and checked against its ``digests``),
            then play goes on. With the policy's random state restored as it was at that step,
            the games equal an uninterrupted run. :class:`ResumeError` if it does not fit.
        on_step: called after every step with the current state (a live object: copy what you
            keep).

    Returns:
        One record per game, in game order.

    Example:
        >>> envs = [make_env("Pong", training=False) for _ in range(2)]
        >>> games = play_matched_games(envs, random_policy(6, seed=0), 1, seed=0)
        >>> [(g.episode, g.seed) for g in games]
        [(0, 0)]
    """
    if n_games < 1:
        raise UserError(f"the number of games must be >= 1, got {n_games}")
    state = resume or PlayState(first, [None] * len(envs), {}, {})
    playing = state.playing
    obs: list[np.ndarray] = [np.empty(0, np.uint8)] * len(envs)
    state.observations = obs

    def start(slot: int) -> None:
        playing[slot] = None
        if state.next_game < first + n_games:
            game = state.next_game
            obs[slot], _ = envs[slot].reset(seed=seed + game)
            playing[slot] = game
            state.actions[game] = []
            state.next_game += 1

    if resume is None:
        for slot in range(len(envs)):
            start(slot)
    else:
        resume.check(len(envs), first, n_games)
        for slot, game in enumerate(resume.playing):
            if game is not None:
                obs[slot] = _replay(envs[slot], seed + game, resume.actions[game],
                                    resume.digests.get(game))  # fmt: skip
    while any(g is not None for g in playing):
        active = [slot for slot, g in enumerate(playing) if g is not None]
        games = [playing[slot] for slot in active]
        actions = policy(np.stack([obs[slot] for slot in active]), games)  # type: ignore[arg-type]
        steps = _step_envs([envs[slot] for slot in active], actions)
        for slot, game, action, step in zip(active, games, actions, steps, strict=True):
            assert game is not None
            state.actions[game].append(int(action))
            obs[slot], _, terminated, truncated, info = step
            if not (terminated or truncated):
                continue
            episode = info.get("episode")
            if episode is None:
                raise RuntimeError("a game ended without info['episode']; use evaluation envs")
            record = GameRecord(
                episode=game,
                seed=seed + game,
                reward=float(episode["r"]),
                length=int(episode["l"]),
                truncated=bool(episode.get("truncated", truncated and not terminated)),
            )
            state.records[game] = record
            del state.actions[game]
            if on_game is not None:
                on_game(record)
            start(slot)
        if on_step is not None:
            on_step(state)
    return [state.records[g] for g in range(first, first + n_games)]


def _replay(env: gym.Env, seed: int, actions: Sequence[int], digest: str | None) -> np.ndarray:
    """Reset ``env`` with ``seed``, replay ``actions`` and return the observation they lead to.

    Raises:
        ResumeError: an action the env does not have, the game ended during the replay, or it
            reached other frames than ``digest``.
    """
    if not all(env.action_space.contains(action) for action in actions):
        raise ResumeError("a saved game holds actions this env does not have")
    observation, _ = env.reset(seed=seed)
    for action in actions:
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            raise ResumeError("a replayed game ended early: this emulator plays it differently")
    observation = np.asarray(observation)
    if digest is not None and frame_digest(observation) != digest:
        raise ResumeError(
            "a replayed game reached other frames: this emulator plays it differently"
        )
    return observation


def _step_envs(envs: Sequence[gym.Env], actions: np.ndarray) -> list[tuple[Any, ...]]:
    """Each env's step result; envs that step together (``step_batch``) run at the same time."""
    batch = getattr(envs[0], "step_batch", None)
    if batch is not None:
        return list(batch(envs, actions))
    return [env.step(int(action)) for env, action in zip(envs, actions, strict=True)]


def make_eval_envs(
    game: Game | str, n: int, preprocessing: AtariPreprocessing | None = None
) -> list[gym.Env]:
    """``n`` evaluation envs (whole games, raw scores) for :func:`play_matched_games`.

    They are unseeded: :func:`play_matched_games` resets each game with its own seed. With
    ``preprocessing.backend == "ale_vector"`` they are :class:`sap_rl.rl.ale_vector.AleGame` s
    (the same games, stepped together in C++ threads).

    Example:
        >>> envs = make_eval_envs("Pong", 2)
        >>> len(envs)
        2
        >>> for env in envs:
        ...     env.close()
    """
    if preprocessing is not None and preprocessing.backend == "ale_vector":
        from sap_rl.rl.ale_vector import AleGame

        return [AleGame(game, training=False, preprocessing=preprocessing)  # type: ignore[misc]
                for _ in range(n)]  # fmt: skip
    return [make_env(game, training=False, preprocessing=preprocessing) for _ in range(n)]


@contextlib.contextmanager
def game_progress(
    total: int, label: str, *, bar: bool = True
) -> Iterator[Callable[[GameRecord], None]]:
    """A per-game progress report for :func:`play_matched_games`' ``on_game``.

    Whole games of a good agent last minutes, so a phase of 30 games is reported game by game:
    with ``bar`` and stderr a terminal, a tqdm bar over games; otherwise one INFO log line per
    finished game on the ``sap_rl.progress`` logger, which the command line shows unless
    ``--log-level ERROR`` is given: that suits log files.

    Args:
        total: games the phase will play.
        label: what is being played, e.g. ``"krull-ddqn: agent"``.
        bar: allow the progress bar (``False``: log lines only).

    Example:
        >>> envs = make_eval_envs("Breakout", 1, preprocessing_for(50))
        >>> with game_progress(1, "random policy", bar=False) as on_game:
        ...     games = play_matched_games(envs, random_policy(4, seed=0), 1, seed=0,
        ...                                on_game=on_game)
        >>> len(games)
        1
    """
    if bar and sys.stderr.isatty():
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # logging_redirect_tqdm: log lines go above the bar instead of breaking it
        game_bar = tqdm(total=total, desc=label, unit="game", dynamic_ncols=True)
        with game_bar, logging_redirect_tqdm():

            def update(game: GameRecord) -> None:
                game_bar.update(1)
                game_bar.set_postfix(last=f"{game.reward:g}")

            yield update
        return
    count = 0

    def log(game: GameRecord) -> None:
        nonlocal count
        count += 1
        capped = " (hit the length cap)" if game.truncated else ""
        progress_logger.info("%s: game %d/%d scored %g in %d steps%s",
                             label, count, total, game.reward, game.length, capped)  # fmt: skip

    yield log


def play_wrapped(
    game: Game | str,
    model: nn.Module,
    n_games: int,
    *,
    attack: str | None = "fgsm",
    eps: float = 0.0,
    seed: int = 0,
    perturb: Literal["stack", "last", "online"] = "stack",
    eot_samples: int = 16,
    dtype: Literal["uint8", "float32"] | None = None,
    max_steps: int | None = None,
    device: str | torch.device = "cpu",
) -> list[GameRecord]:
    """The plain user loop: one env at a time, wrapped in :class:`PerturbObservation`, greedy.

    Game ``g`` is a fresh env seeded with ``seed + g``, as in the evaluator, so for a
    deterministic model the rewards equal :func:`play_matched_games` with :func:`agent_policy`.
    It is the reference for checks and benchmarks; ``attack=None`` or ``eps=0`` plays clean
    without the wrapper.

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> games = play_wrapped("Pong", QNetwork(6), 1, eps=1, max_steps=50)
        >>> games[0].length <= 50
        True
    """
    records = []
    preprocessing = preprocessing_for(max_steps)
    for g in range(n_games):
        env = make_env(game, seed=seed + g, training=False, preprocessing=preprocessing)
        if attack is not None and eps > 0:
            env = PerturbObservation(env, model, attack, eps, perturb=perturb,
                                     eot_samples=eot_samples, dtype=dtype, seed=seed + g,
                                     device=device)  # fmt: skip
        try:
            observation, _ = env.reset()
            while True:
                with torch.no_grad():
                    action = int(model(obs_to_tensor(observation, device)).argmax(dim=1)[0])
                observation, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    episode = info["episode"]
                    records.append(GameRecord(g, seed + g, float(episode["r"]), int(episode["l"]),
                                              bool(episode.get("truncated", False))))  # fmt: skip
                    break
        finally:
            env.close()
    return records


def preprocessing_for(
    max_steps: int | None, backend: EnvBackend = DEFAULT_ENV_BACKEND
) -> AtariPreprocessing:
    """The evaluation preprocessing, with games capped at about ``max_steps`` agent steps.

    Example:
        >>> preprocessing_for(100).max_episode_frames
        400
        >>> preprocessing_for(None, "ale_vector").backend
        'ale_vector'
    """
    base = AtariPreprocessing(backend=backend)
    if max_steps is None:
        return base
    return AtariPreprocessing(max_episode_frames=max_steps * base.frame_skip, backend=backend)
