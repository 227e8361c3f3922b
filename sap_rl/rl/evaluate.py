"""Relative reward of a trained Atari agent under attack, per defense (``sap-rl evaluate``).

For each cell (defense, attack, eps) the agent plays ``episodes`` whole games with the defense
inserted post hoc (:mod:`sap_rl.defenses`) and every observation attacked before it acts
(:mod:`sap_rl.rl.perturb`, batched over the parallel environments). How much reward survives is
reported per cell.

Matched games
    Game ``g`` (0 <= g < episodes) of **every** cell is played on an environment reset with seed
    ``seed + g``, whichever parallel environment slot plays it; exactly games ``0 .. episodes-1``
    are collected (no bias toward short games). Cells therefore differ only by defense and attack.
    Actions are greedy (``epsilon`` > 0 takes a uniformly random action with that probability,
    drawn from a per-game generator seeded by ``(seed, g)``, the same in every cell).
Clean cells
    eps = 0 is always played (``relative`` needs it), once per defense, and shared by every
    attack: no attack runs at eps = 0, so the games are the same whatever the attack.
Randomness
    Defense draws and PGD random starts are seeded per cell from ``(seed, defense, attack, eps)``,
    so rerunning a cell reproduces it; for stochastic defenses the draws also depend on
    ``n_envs`` (one draw per batched forward pass covers all parallel games).
Whole games
    Rewards are the unclipped game scores; games are capped by the environment at 27,000 agent
    steps, or about ``max_steps`` agent steps if set (the cap is ``4 * max_steps`` emulator frames,
    no-op starts included). Capped games count with the score reached and are logged.

Outputs in ``out``: ``episodes.csv`` (one row per game), ``summary.csv`` and
``summary.json`` (``mean``, ``std``, ``sem``, ``relative`` = mean / the same defense's eps = 0 mean,
``normalized`` = (mean - random score) / (dense clean mean - random score); the JSON adds the
resolved config, agent, random score and versions) and ``relative_reward.png``. Each finished cell
is saved atomically under ``cells/``; rerunning the same command skips finished cells, and
settings that would change finished cells (agent, episodes, seed, ...) are refused for an ``out``
that already holds results. The random-policy score is the agent card's ``random_score`` or, if
absent, measured once with a seeded uniform random policy on the same game seeds and cached in
``out/random_score.json``.

Example:
    >>> cfg = EvalConfig(eps=[2, 0, 1], defenses=["dense", "SAP-100"])
    >>> cfg.eps, cfg.defenses
    ([0.0, 1.0, 2.0], ['dense', 'sap-100'])
    >>> [c.name for c in plan_cells(cfg)][:3]
    ['dense__clean', 'sap-100__clean', 'dense__fgsm__1']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from sap_rl import __version__
from sap_rl.attacks import check_eot_samples, parse_attack
from sap_rl.config import to_dict
from sap_rl.defenses import parse_defense
from sap_rl.devices import resolve_device
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json, check_out_dir, read_json
from sap_rl.lock import output_lock
from sap_rl.report import SummaryRow, plot_relative_reward, summarize, write_csv, write_summary
from sap_rl.rl.agent import CARD_FILE, AgentCard, QNetwork, load_agent, read_card
from sap_rl.rl.envs import AtariPreprocessing, make_env, obs_to_tensor
from sap_rl.rl.games import Game, resolve_game
from sap_rl.rl.perturb import PERTURB_MODES, ObservationAttack, PerturbObservation, check_eps
from sap_rl.rl.workers import post_event, run_jobs

__all__ = [
    "EPISODE_COLUMNS",
    "Cell",
    "EvalConfig",
    "EvalResult",
    "GameRecord",
    "default_agent",
    "evaluate",
    "find_agents",
    "plan_cells",
    "play_cells",
    "play_matched_games",
    "play_wrapped",
    "resolve_agent",
    "set_threads",
]

logger = logging.getLogger(__name__)

CELLS_DIR = "cells"
RUN_FILE = "run.json"
RANDOM_FILE = "random_score.json"
EPISODE_COLUMNS = (
    "game", "agent", "defense", "attack", "eps", "seed", "episode", "reward", "length",
)  # fmt: skip
TRAIN_HINT = "sap-rl train --game Pong --out agents/pong-ddqn"

#: ``(n, 4, 84, 84)`` uint8 observations of the active games and their game indices -> actions.
GamePolicy = Callable[[np.ndarray, Sequence[int]], np.ndarray]


# --------------------------------------------------------------------------- configuration


@dataclass
class EvalConfig:
    """What :func:`evaluate` plays (loadable from YAML, e.g. ``configs/eval/default.yaml``).

    Attributes:
        agent: agent folder or name under ``agents/``; ``None``: the shipped agent with the best
            human-normalized clean score (:func:`default_agent`).
        game: if set, the game the agent must have been trained on (a check).
        defenses: defense names (:func:`sap_rl.defenses.parse_defense`).
        attacks: attack names (:func:`sap_rl.attacks.parse_attack`).
        eps: budgets in grey levels of the 0-255 frames; 0 is always added.
        episodes: whole games per cell (games ``0 .. episodes-1``, env seeds ``seed + g``).
        n_envs: parallel environments (batched attack); changes only the speed (and the
            stochastic defenses' draws), never which games are played.
        seed: base seed of the game seeds and of every random draw.
        eot_samples: draws averaged by ``-eot`` attacks (at most
            :data:`sap_rl.attacks.MAX_EOT_SAMPLES`).
        action_samples: draws whose Q-values a stochastic defense averages to pick its action
            (1: one random draw per step, the mixed strategy).
        perturb: ``stack`` (all four frames) or ``last`` (only the newest, Huang et al. 2017).
        epsilon: probability of a uniformly random action (0: greedy).
        max_steps: cap each game at about this many agent steps (``None``: 27,000).
        random_episodes: games of the uniform random policy, if the card has no random score.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        threads: CPU threads of torch and of SAP's numba kernels during the run (``None``: as
            they are; 1 in each worker when ``workers`` > 1). On a busy machine, 1 is often much
            faster than 2.
        workers: processes playing cells at the same time (:mod:`sap_rl.rl.workers`). Cells
            are independent and seeded on their own, so this changes only the speed, never a
            game: give it the number of free cores.
    """

    agent: str | None = None
    game: str | None = None
    defenses: list[str] = field(default_factory=lambda: ["dense", "sap-100"])
    attacks: list[str] = field(default_factory=lambda: ["fgsm"])
    eps: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    episodes: int = 4
    n_envs: int = 4
    seed: int = 0
    eot_samples: int = 16
    action_samples: int = 1
    perturb: Literal["stack", "last"] = "stack"
    epsilon: float = 0.0
    max_steps: int | None = None
    random_episodes: int = 10
    device: str = "auto"
    threads: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        names = (
            "episodes",
            "n_envs",
            "eot_samples",
            "action_samples",
            "random_episodes",
            "workers",
        )
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        check_eot_samples(self.eot_samples)
        for name in ("max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise UserError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.perturb not in PERTURB_MODES:
            raise UserError(f"perturb must be 'stack' or 'last', got {self.perturb!r}")
        if not self.defenses:
            raise UserError("no defense given; e.g. --defense dense,sap-100")
        if not self.attacks:
            raise UserError("no attack given; e.g. --attack fgsm")
        self.defenses = _unique(parse_defense(name).name for name in self.defenses)
        self.attacks = _unique(parse_attack(name).name for name in self.attacks)
        self.eps = sorted({0.0, *(check_eps(e) for e in self.eps)})
        if self.game is not None:
            self.game = resolve_game(self.game).name


def _unique(names: Iterator[str] | Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Cell:
    """One (defense, attack, eps) cell; the clean cell of a defense has ``attack=None, eps=0``."""

    defense: str
    attack: str | None
    eps: float

    @property
    def name(self) -> str:
        """File-name key, e.g. ``sap-100__fgsm__0.5`` or ``dense__clean``."""
        if self.attack is None:
            return f"{self.defense}__clean"
        return f"{self.defense}__{self.attack}__{self.eps:g}"


def plan_cells(config: EvalConfig) -> list[Cell]:
    """The cells to play, in order: every defense's clean cell, then per attack defense x eps > 0.

    Attacks are played in the order they are listed, so a long grid that lists the cheap attack
    first (``fgsm`` before ``pgd-10-eot``) has finished its tables in that order when it is
    stopped by ``time_limit_s`` or interrupted.

    Example:
        >>> [c.name for c in plan_cells(EvalConfig(eps=[4], attacks=["fgsm", "pgd-10"]))]
        ... # doctest: +NORMALIZE_WHITESPACE
        ['dense__clean', 'sap-100__clean', 'dense__fgsm__4', 'sap-100__fgsm__4',
         'dense__pgd-10__4', 'sap-100__pgd-10__4']
    """
    cells = [Cell(defense, None, 0.0) for defense in config.defenses]
    for attack in config.attacks:
        cells.extend(Cell(d, attack, e) for d in config.defenses for e in config.eps if e > 0)
    return cells


@dataclass(frozen=True)
class GameRecord:
    """One whole game: index, env seed, unclipped score, length in agent steps, capped or not."""

    episode: int
    seed: int
    reward: float
    length: int
    truncated: bool = False


@dataclass
class EvalResult:
    """What :func:`evaluate` produced: the summary rows, the output folder and run statistics."""

    rows: list[SummaryRow]
    out: Path
    meta: dict[str, Any]
    cells_played: int
    cells_skipped: int
    cells_missing: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- agents


def _agent_roots() -> list[Path]:
    roots = [Path.cwd() / "agents", Path(__file__).resolve().parents[2] / "agents"]
    return list(dict.fromkeys(root.resolve() for root in roots))


def find_agents() -> list[Path]:
    """Agent folders (holding a ``card.json``) under ``agents/`` of the working dir and the repo.

    Example:
        >>> agents = find_agents()
        >>> all((folder / CARD_FILE).is_file() for folder in agents)
        True
        >>> "krull-ddqn" in [folder.name for folder in agents]  # shipped in the repo's agents/
        True
    """
    found: list[Path] = []
    for root in _agent_roots():
        if root.is_dir():
            found.extend(sorted(card.parent for card in root.rglob(CARD_FILE)))
    return found


def default_agent(shipped: Sequence[Path]) -> Path:
    """The agent ``sap-rl evaluate`` plays when none is named: the best of ``shipped``.

    Best is the highest human-normalized clean score on the agent's card (the standard Atari
    reference scores); cards without one rank last, and ties go to the first in ``shipped``.
    The strongest agent shows an attack's effect most plainly.

    Example:
        >>> default_agent(find_agents()) in find_agents()
        True
    """
    if not shipped:
        raise ValueError("no agents to choose from")

    def rank(folder: Path) -> float:
        try:
            normalized = read_card(folder).with_reference_scores().human_normalized
        except UserError:
            return -math.inf
        return -math.inf if normalized is None else normalized

    return max(shipped, key=rank)


def resolve_agent(agent: str | os.PathLike[str] | None) -> Path:
    """The agent folder for a path, a name under ``agents/``, or ``None`` (:func:`default_agent`).

    A training run folder (``runs/pong-ddqn-0``) resolves to the agent it exported (``agent/``).

    Raises:
        UserError: no such folder or name, or no agent installed (says how to train one).

    Example:
        >>> resolve_agent("no-such-agent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: agent not found: no-such-agent ...
    """
    if agent is None:
        shipped = find_agents()
        if not shipped:
            raise UserError(
                f"no agent is installed in agents/ and no --agent was given; train one with: "
                f"{TRAIN_HINT}"
            )
        return default_agent(shipped)
    path = Path(agent)
    candidates = [path]
    if not path.exists() and path.name == str(agent):
        candidates += [root / path.name for root in _agent_roots()]
    for candidate in candidates:
        if candidate.exists():
            # A training run folder holds its exported agent in ``agent/``.
            run_agent = candidate / "agent"
            if not (candidate / CARD_FILE).exists() and (run_agent / CARD_FILE).is_file():
                return run_agent
            return candidate
    known = [p.parent.name if p.name == "agent" else p.name for p in find_agents()]
    names = ", ".join(known) or f"none installed (train one: {TRAIN_HINT})"
    raise UserError(f"agent not found: {agent} (not a folder; shipped agents: {names})")


# --------------------------------------------------------------------------- the evaluation


def evaluate(
    config: EvalConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    time_limit_s: float = 0.0,
) -> EvalResult:
    """Play every cell of ``config``, write the result files into ``out`` and return the summary.

    Everything is validated (agent files, game, names, budgets, a conflicting ``out``) before
    anything is written. Finished cells found in ``out`` are reused. The run holds ``out``'s
    lock (:func:`sap_rl.lock.output_lock`) while it writes: a second run on ``out`` is refused.

    Args:
        config: the grid and settings.
        out: output folder (default ``runs/evaluate/<agent name>``).
        progress: show a progress bar over games on a terminal (stderr).
        time_limit_s: start no new cell after this many seconds (0: no limit). The summary then
            covers the finished cells, ``summary.json`` lists the missing ones under
            ``cells_missing``, and rerunning the same command plays them.

    Returns:
        The summary rows (as in ``summary.csv``) with the output folder and metadata.

    Example:
        >>> cfg = EvalConfig(agent="agents/krull-ddqn", eps=[0, 1], episodes=2)  # doctest: +SKIP
        >>> result = evaluate(cfg, "runs/demo")  # doctest: +SKIP
        >>> [(r.defense, r.eps, r.relative) for r in result.rows]  # doctest: +SKIP
    """
    folder = resolve_agent(config.agent)
    device = resolve_device(config.device)
    net, card = load_agent(folder, game=config.game, device=device)
    game = resolve_game(card.game)
    default_out = Path("runs") / "evaluate" / (card.name or folder.name)
    out_dir = check_out_dir(Path(out) if out is not None else default_out)
    fingerprint = _fingerprint(card, game, config)
    # One writer per folder: two runs of different settings would mix their files. The
    # folder's contents are checked under the lock, so no other run changes them meanwhile.
    with output_lock(out_dir):
        _check_out(out_dir, fingerprint)

        cells = plan_cells(config)
        done = {
            c: games for c in cells if (games := _load_cell(out_dir, c, fingerprint)) is not None
        }
        skipped = len(done)
        atomic_write_json(out_dir / RUN_FILE, {"fingerprint": fingerprint})
        logger.info(
            "%s on %s: %d cells x %d games (%d cells already done) -> %s",
            card.name, game.name, len(cells), config.episodes, len(done), out_dir,
        )  # fmt: skip

        started = time.perf_counter()

        def may_start() -> bool:
            return time_limit_s <= 0 or time.perf_counter() - started < time_limit_s

        restore_threads = set_threads(config.threads) if config.threads else None
        try:
            random_score, random_source = _random_score(card, config, game, out_dir)
            bar = _progress_bar(len(cells) * config.episodes, len(done) * config.episodes, progress)
            with bar, _logging_beside(bar):
                todo = [cell for cell in cells if cell not in done]
                if config.workers > 1:
                    bar.set_description(f"{config.workers} workers")
                played = play_cells(
                    net, game, config, todo, device=device, may_start=may_start,
                    on_game=bar.update, on_start=lambda c: bar.set_description(c.name),
                )  # fmt: skip
                for cell, games, seconds in played:
                    _save_cell(out_dir, cell, games, fingerprint, config, seconds)
                    done[cell] = games
                    _write_episodes(out_dir, game, card, cells, done)
                    _log_cell(cell, games, seconds)
        finally:
            if restore_threads is not None:
                set_threads(*restore_threads)
        if len(done) < len(cells):
            logger.warning("time limit of %.0f s reached; %d cells left to play",
                           time_limit_s, len(cells) - len(done))  # fmt: skip

        records = [(c.defense, attack, c.eps, g.reward)
                   for c in cells if c in done
                   for attack in _attacks_of(c, config) for g in done[c]]  # fmt: skip
        dense_clean = Cell("dense", None, 0.0) in done
        baseline = None if dense_clean or card.clean_score.episodes == 0 else card.clean_score.mean
        rows = summarize(records, random_score=random_score, baseline_score=baseline)
        meta = _meta(config, card, folder, game, done, random_score, random_source, baseline)
        missing = [c.name for c in cells if c not in done]
        meta["cells_missing"] = missing
        meta["seconds"] = round(time.perf_counter() - started, 3)
        _write_episodes(out_dir, game, card, cells, done)
        write_summary(out_dir, rows, meta)
        title = f"{card.name} ({game.name})"
        plot_relative_reward(rows, out_dir / "relative_reward.png", title=title)
        return EvalResult(rows, out_dir, meta, cells_played=len(cells) - skipped - len(missing),
                          cells_skipped=skipped, cells_missing=missing)  # fmt: skip


def _attacks_of(cell: Cell, config: EvalConfig) -> list[str]:
    """Attacks whose tables a cell belongs to (a clean cell belongs to all of them)."""
    return list(config.attacks) if cell.attack is None else [cell.attack]


def _play_cell(
    net: nn.Module,
    cell: Cell,
    config: EvalConfig,
    envs: Sequence[gym.Env],
    device: torch.device,
    *,
    on_game: Callable[[GameRecord], None] | None = None,
) -> list[GameRecord]:
    """Play the matched games of one cell with the defense inserted and the attack active."""
    cell_seed = _cell_seed(config.seed, cell)
    model = parse_defense(cell.defense).apply(net).to(device).eval()
    attack = ObservationAttack(
        model,
        cell.attack,
        cell.eps,
        perturb=config.perturb,
        eot_samples=config.eot_samples,
        action_samples=config.action_samples,
        generator=torch.Generator().manual_seed(cell_seed),
    )
    policy = agent_policy(attack, device=device, epsilon=config.epsilon, seed=config.seed)
    with _seeded_torch(cell_seed, device):
        return play_matched_games(envs, policy, config.episodes, seed=config.seed, on_game=on_game)


def _make_envs(game: Game, config: EvalConfig) -> list[gym.Env]:
    return [make_env(game, training=False, preprocessing=_preprocessing(config))
            for _ in range(min(config.n_envs, config.episodes))]  # fmt: skip


def play_cells(
    net: QNetwork,
    game: Game | str,
    config: EvalConfig,
    cells: Sequence[Cell],
    *,
    device: str | torch.device = "cpu",
    may_start: Callable[[], bool] | None = None,
    on_game: Callable[[], None] | None = None,
    on_start: Callable[[Cell], None] | None = None,
) -> Iterator[tuple[Cell, list[GameRecord], float]]:
    """Play ``cells`` of ``config`` with ``net``; yield ``(cell, games, seconds)`` as each ends.

    With ``config.workers`` > 1 the cells are played that many at a time in worker processes
    (:mod:`sap_rl.rl.workers`; CPU threads per worker: ``config.threads`` or 1), else one after
    the other here. Either way each cell's games are the same: cells are seeded on their own.

    Args:
        net: the agent's Q-network (the defenses are inserted per cell); workers rebuild it
            from its weights.
        game: the game the agent plays.
        config: the settings (episodes, n_envs, seeds, attack options, workers...).
        cells: the cells to play, started in this order.
        device: where the network runs in this process (workers use ``config.device``).
        may_start: asked before each cell starts; once it says no, no further cell starts.
        on_game: called here after every finished game (for progress bars).
        on_start: called here with each cell started in this process (one worker).

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> cfg = EvalConfig(episodes=1, n_envs=1, max_steps=20)
        >>> played = play_cells(QNetwork(6), "Pong", cfg, plan_cells(cfg)[:1])
        >>> [(cell.name, len(games)) for cell, games, _ in played]
        [('dense__clean', 1)]
    """
    game = resolve_game(game) if isinstance(game, str) else game
    may_start = may_start or (lambda: True)
    count_game = (lambda _: on_game()) if on_game is not None else None
    if config.workers > 1 and len(cells) > 1:
        cores = os.cpu_count() or 1
        if config.workers > cores:
            logger.warning("%d workers on %d CPU cores: they will share cores (slower per cell)",
                           config.workers, cores)  # fmt: skip
        state = {name: value.detach().cpu() for name, value in net.state_dict().items()}
        for cell, (games, seconds) in run_jobs(
            _worker_cell, cells, workers=min(config.workers, len(cells)),
            initializer=_worker_setup, initargs=(state, game.name, config), may_start=may_start,
            on_event=count_game,
        ):  # fmt: skip
            yield cell, games, seconds
        return
    envs = _make_envs(game, config)
    try:
        for cell in cells:
            if not may_start():
                return
            if on_start is not None:
                on_start(cell)
            t0 = time.perf_counter()
            games = _play_cell(net, cell, config, envs, torch.device(device), on_game=count_game)
            yield cell, games, time.perf_counter() - t0
    finally:
        for env in envs:
            env.close()


_worker: dict[str, Any] = {}  # a worker process's network, envs and config (_worker_setup)


def _worker_setup(state: dict[str, torch.Tensor], game_name: str, config: EvalConfig) -> None:
    """Build the agent's network and the envs once in a worker process of :func:`run_jobs`."""
    from sap_rl.memory import keep_freed_memory

    keep_freed_memory()  # a process of our own: the setting of the sap-rl command line
    set_threads(config.threads or 1)
    net = QNetwork(int(state["head.weight"].shape[0]))
    net.load_state_dict(state)
    device = resolve_device(config.device)
    game = resolve_game(game_name)
    _worker.update(net=net.to(device).eval(), config=config, device=device,
                   envs=_make_envs(game, config))  # fmt: skip


def _worker_cell(cell: Cell) -> tuple[list[GameRecord], float]:
    """Play one cell in a worker process; each finished game is posted to the parent."""
    t0 = time.perf_counter()
    games = _play_cell(_worker["net"], cell, _worker["config"], _worker["envs"],
                       _worker["device"], on_game=post_event)  # fmt: skip
    return games, time.perf_counter() - t0


# --------------------------------------------------------------------------- playing games


def agent_policy(
    attack: ObservationAttack,
    *,
    device: str | torch.device = "cpu",
    epsilon: float = 0.0,
    seed: int = 0,
) -> GamePolicy:
    """The defended agent under attack as a :data:`GamePolicy` (batched; epsilon-greedy).

    All active games are attacked in one forward/backward pass (:meth:`ObservationAttack.act`).
    With ``epsilon > 0`` game ``g`` explores with its own generator seeded by ``(seed, g)``.

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> policy = agent_policy(ObservationAttack(QNetwork(6), "fgsm", 1.0))
        >>> policy(np.zeros((2, 4, 84, 84), np.uint8), [0, 1]).shape
        (2,)
    """
    rngs: dict[int, np.random.Generator] = {}

    def act(obs: np.ndarray, games: Sequence[int]) -> np.ndarray:
        actions, _ = attack.act(obs_to_tensor(obs, device))
        chosen: np.ndarray = actions.cpu().numpy()
        if epsilon > 0:
            n_actions = int(attack.q_values(obs_to_tensor(obs[:1], device)).shape[1])
            for row, g in enumerate(games):
                rng = rngs.setdefault(g, np.random.default_rng([seed, g]))
                if rng.random() < epsilon:
                    chosen[row] = rng.integers(n_actions)
        return chosen

    return act


def random_game_policy(n_actions: int, *, seed: int) -> GamePolicy:
    """Uniform random actions, game ``g`` drawing from a generator seeded by ``(seed, g)``.

    Example:
        >>> random_game_policy(4, seed=0)(np.zeros((3, 4, 84, 84), np.uint8), [0, 1, 2]).shape
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
    on_game: Callable[[GameRecord], None] | None = None,
) -> list[GameRecord]:
    """Play games ``0 .. n_games-1`` on parallel envs; game ``g`` starts with seed ``seed + g``.

    Each env slot takes the next unplayed game when its game ends, so which slot plays a game
    never changes the game. Every step, the policy gets the observations of all running games in
    one batch. ``envs`` must be evaluation envs (:func:`sap_rl.rl.envs.make_env` with
    ``training=False``): a game ends with ``info["episode"]``.

    Returns:
        One record per game, in game order.

    Example:
        >>> envs = [make_env("Pong", training=False) for _ in range(2)]
        >>> games = play_matched_games(envs, random_game_policy(6, seed=0), 1, seed=0)
        >>> [(g.episode, g.seed) for g in games]
        [(0, 0)]
    """
    if n_games < 1:
        raise UserError(f"the number of games must be >= 1, got {n_games}")
    results: dict[int, GameRecord] = {}
    playing: list[int | None] = [None] * len(envs)
    obs: list[np.ndarray] = [np.empty(0, np.uint8)] * len(envs)
    next_game = 0

    def start(slot: int) -> None:
        nonlocal next_game
        playing[slot] = None
        if next_game < n_games:
            obs[slot], _ = envs[slot].reset(seed=seed + next_game)
            playing[slot] = next_game
            next_game += 1

    for slot in range(len(envs)):
        start(slot)
    while any(g is not None for g in playing):
        active = [slot for slot, g in enumerate(playing) if g is not None]
        games = [playing[slot] for slot in active]
        actions = policy(np.stack([obs[slot] for slot in active]), games)  # type: ignore[arg-type]
        for slot, game, action in zip(active, games, actions, strict=True):
            obs[slot], _, terminated, truncated, info = envs[slot].step(int(action))
            if not (terminated or truncated):
                continue
            assert game is not None
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
            results[game] = record
            if on_game is not None:
                on_game(record)
            start(slot)
    return [results[g] for g in range(n_games)]


def play_wrapped(
    game: Game | str,
    model: nn.Module,
    n_games: int,
    *,
    attack: str | None = "fgsm",
    eps: float = 0.0,
    seed: int = 0,
    perturb: Literal["stack", "last"] = "stack",
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
    preprocessing = _preprocessing_for(max_steps)
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


# --------------------------------------------------------------------------- random score


def _random_score(
    card: AgentCard, config: EvalConfig, game: Game, out_dir: Path
) -> tuple[float, str]:
    """The random-policy score: from the card, from the cache in ``out_dir``, or measured."""
    if card.random_score is not None:
        return float(card.random_score), "agent card"
    key = {"game": card.game, "seed": config.seed, "episodes": config.random_episodes,
           "max_steps": config.max_steps}  # fmt: skip
    path = out_dir / RANDOM_FILE
    if path.is_file():
        cached = read_json(path)
        if isinstance(cached, dict) and cached.get("key") == key:
            mean = cached.get("mean")
            # A damaged cache only costs a new measurement.
            if isinstance(mean, (int, float)) and not isinstance(mean, bool):
                return float(mean), f"measured, cached in {RANDOM_FILE}"
    logger.info("measuring the random-policy score over %d games", config.random_episodes)
    envs = _make_envs(game, config)
    try:
        n_actions = int(envs[0].action_space.n)  # type: ignore[attr-defined]
        games = play_matched_games(
            envs, random_game_policy(n_actions, seed=config.seed), config.random_episodes,
            seed=config.seed,
        )  # fmt: skip
    finally:
        for env in envs:
            env.close()
    mean = float(np.mean([g.reward for g in games]))
    atomic_write_json(path, {"key": key, "mean": mean, "games": [asdict(g) for g in games]})
    return mean, f"measured over {len(games)} games of a uniform random policy"


# --------------------------------------------------------------------------- files


def _fingerprint(card: AgentCard, game: Game, config: EvalConfig) -> dict[str, Any]:
    """The settings that define a cell's games; finished cells are reused only if they match."""
    return {
        "agent": card.name,
        "agent_sha256": card.sha256,
        "game": game.name,
        "episodes": config.episodes,
        "seed": config.seed,
        "max_steps": config.max_steps,
        "perturb": config.perturb,
        "epsilon": config.epsilon,
        "eot_samples": config.eot_samples,
        "action_samples": config.action_samples,
    }


def _check_out(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse an ``out`` folder that holds results of a different evaluation."""
    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        return
    data = read_json(run_file)
    previous = data.get("fingerprint", {}) if isinstance(data, dict) else None
    if not isinstance(previous, dict):
        raise UserError(
            f"{run_file}: not a run file of sap-rl evaluate (expected a JSON object with a "
            "fingerprint); use another --out or delete that folder"
        )
    changed = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in fingerprint.items()
               if previous.get(k) != v]  # fmt: skip
    if changed:
        raise UserError(
            f"{out_dir} holds results of a different evaluation ({'; '.join(changed)}); "
            "use another --out or delete that folder"
        )


def _cell_path(out_dir: Path, cell: Cell) -> Path:
    return out_dir / CELLS_DIR / f"{cell.name}.json"


def _load_cell(out_dir: Path, cell: Cell, fingerprint: dict[str, Any]) -> list[GameRecord] | None:
    """A finished cell's games, ``None`` if not played yet; a cell of other settings is an error."""
    path = _cell_path(out_dir, cell)
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        games = [GameRecord(**g) for g in data["games"]]
        stored = data["fingerprint"]
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: not a cell file of sap-rl evaluate ({err}); delete it") from None
    if stored != fingerprint or len(games) != fingerprint["episodes"]:
        raise UserError(
            f"{path} was played with other settings; use another --out or delete that folder"
        )
    return games


def _save_cell(
    out_dir: Path,
    cell: Cell,
    games: Sequence[GameRecord],
    fingerprint: dict[str, Any],
    config: EvalConfig,
    seconds: float,
) -> None:
    atomic_write_json(
        _cell_path(out_dir, cell),
        {
            "defense": cell.defense,
            "attack": cell.attack,
            "eps": cell.eps,
            "fingerprint": fingerprint,
            "n_envs": config.n_envs,
            "seconds": round(seconds, 3),
            "steps": sum(g.length for g in games),
            "games": [asdict(g) for g in games],
        },
    )


def _write_episodes(
    out_dir: Path,
    game: Game,
    card: AgentCard,
    cells: Sequence[Cell],
    done: dict[Cell, list[GameRecord]],
) -> None:
    attacks = _unique(c.attack for c in cells if c.attack is not None)
    rows = [
        (game.name, card.name, c.defense, attack, c.eps, g.seed, g.episode, g.reward, g.length)
        for c in cells if c in done
        for attack in (attacks or ["none"] if c.attack is None else [c.attack])
        for g in done[c]
    ]  # fmt: skip
    write_csv(out_dir / "episodes.csv", EPISODE_COLUMNS, rows)


def _meta(
    config: EvalConfig,
    card: AgentCard,
    folder: Path,
    game: Game,
    done: dict[Cell, list[GameRecord]],
    random_score: float,
    random_source: str,
    baseline: float | None,
) -> dict[str, Any]:
    games = [g for records in done.values() for g in records]
    return {
        "game": game.name,
        "agent": {
            "name": card.name,
            "path": str(folder),
            "sha256": card.sha256,
            "clean_score": asdict(card.clean_score),
        },
        "config": {**to_dict(config), "agent": str(folder)},
        "random_score": {"value": random_score, "source": random_source},
        "baseline": {
            "value": baseline,
            "source": "agent card clean_score" if baseline is not None else "dense eps=0 cell",
        },
        "games": len(games),
        "truncated_games": sum(g.truncated for g in games),
        "agent_steps": sum(g.length for g in games),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import ale_py
    import gymnasium
    import stable_baselines3

    return {
        "sap_rl": __version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "ale_py": ale_py.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- small helpers


def _preprocessing(config: EvalConfig) -> AtariPreprocessing:
    return _preprocessing_for(config.max_steps)


def _preprocessing_for(max_steps: int | None) -> AtariPreprocessing:
    base = AtariPreprocessing()
    if max_steps is None:
        return base
    return AtariPreprocessing(max_episode_frames=max_steps * base.frame_skip)


def _cell_seed(seed: int, cell: Cell) -> int:
    """A 63-bit seed from ``(seed, defense, attack, eps)``, stable across runs and platforms."""
    text = json.dumps([seed, cell.defense, cell.attack, cell.eps])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block and restore them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def set_threads(torch_threads: int, numba_threads: int | None = None) -> tuple[int, int]:
    """Set the CPU threads of torch and of SAP's numba kernels; returns the previous ``(torch,
    numba)`` counts (pass them back to restore).

    numba's OpenMP pool resets OpenMP's thread count (which torch reads) when it starts, at the
    first SAP call of the process; starting it here first keeps the counts as asked.

    Example:
        >>> previous = set_threads(1)
        >>> torch.get_num_threads()
        1
        >>> _ = set_threads(*previous)
    """
    import numba

    previous_torch = torch.get_num_threads()
    previous_numba = numba.get_num_threads()  # starts numba's pool (if not yet started)
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(numba_threads or torch_threads, limit)))
    torch.set_num_threads(torch_threads)
    return previous_torch, previous_numba


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="game", dynamic_ncols=True,
                disable=not enabled or not sys.stderr.isatty())  # fmt: skip


def _logging_beside(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """Route log lines through the progress bar (so they do not break it) while it is shown."""
    if bar.disable:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _log_cell(cell: Cell, games: Sequence[GameRecord], seconds: float) -> None:
    steps = sum(g.length for g in games)
    mean = float(np.mean([g.reward for g in games]))
    rate = steps / max(seconds, 1e-9)
    logger.info("%s: mean reward %.2f over %d games (%d steps, %.1f s, %.0f steps/s)",
                cell.name, mean, len(games), steps, seconds, rate)  # fmt: skip
    capped = sum(g.truncated for g in games)
    if capped:
        logger.warning("%s: %d of %d games hit the length cap", cell.name, capped, len(games))
