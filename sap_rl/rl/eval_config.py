"""What ``sap-rl evaluate`` plays: its settings and its cells.

Example:
    >>> cfg = AtariEvalConfig(eps=[2, 0, 1], defenses=["dense", "SAP-100"])
    >>> cfg.eps, cfg.defenses
    ([0.0, 1.0, 2.0], ['dense', 'sap-100'])
    >>> [c.name for c in plan_cells(cfg)][:3]
    ['dense__clean', 'sap-100__clean', 'dense__fgsm__1']
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sap_rl.attacks import check_eot_samples, parse_attack
from sap_rl.defenses import parse_defense
from sap_rl.errors import UserError
from sap_rl.grid.executors import BACKENDS, Backend
from sap_rl.rl.envs import EnvBackend, check_env_backend
from sap_rl.rl.games import resolve_game
from sap_rl.rl.perturb import PERTURB_MODES, check_eps, check_timed
from sap_rl.sanity import DEFAULT_LARGE_EPS, check_large_eps

__all__ = ["AtariEvalConfig", "Cell", "plan_cells"]


@dataclass
class AtariEvalConfig:
    """What :func:`evaluate` plays (loadable from YAML, e.g. ``configs/eval/default.yaml``).

    Attributes:
        agent: agent folder or name under ``agents/``; ``None``: the shipped agent with the best
            human-normalized clean score (:func:`default_agent`).
        game: if set, the game the agent must have been trained on (a check).
        defenses: defense names (:func:`sap_rl.defenses.parse_defense`).
        attacks: attack names (:func:`sap_rl.attacks.parse_attack`).
        eps: budgets in grey levels of the 0-255 frames; 0 is always added.
        episodes: whole games per cell (games ``0 .. episodes-1``, env seeds ``seed + g``).
        n_envs: games played at once, batched through one attack (in parallel environments);
            also the size of a unit of work: a cell's games are split into units of ``n_envs``
            consecutive games, each seeded on its own (:mod:`sap_rl.rl.evaluate_cells`). Never
            changes which games are played; changes the stochastic defenses' draws.
        seed: base seed of the game seeds and of every random draw.
        eot_samples: draws averaged by ``-eot`` attacks (at most
            :data:`sap_rl.attacks.MAX_EOT_SAMPLES`).
        action_samples: draws whose Q-values a stochastic defense averages to pick its action
            (1: one random draw per step, the mixed strategy).
        perturb: ``stack`` (all four frames, rewritten every step), ``last`` (only the newest,
            Huang et al. 2017) or ``online`` (each frame perturbed once, when it is emitted, and
            kept so in later stacks); see :mod:`sap_rl.rl.perturb` and docs/evaluation.md.
        timed_threshold: ``timed-<attack>`` attacks a step only when the agent's preference,
            the largest minus the smallest probability of ``softmax(Q)`` on the clean frames,
            exceeds this (Lin et al. 2017); >= 0.
        timed_budget: ``timed-<attack>`` attacks at most this fraction of a game's steps so far,
            in (0, 1] (1: every step above the threshold).
        epsilon: probability of a uniformly random action (0: greedy).
        large_eps: budgets from which every attack must bring the reward down to about the
            random policy's; a row that stays above it is flagged (:mod:`sap_rl.sanity`). Only
            read when the summary is made, never part of the fingerprint; ``.inf`` turns it off.
        max_steps: cap each game at about this many agent steps (``None``: 27,000).
        random_episodes: games of the uniform random policy, if the card has no random score.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        threads: CPU threads of torch and of SAP's numba kernels during the run (``None``: as
            they are; 1 in each worker when ``workers`` > 1). On a busy machine, 1 is often much
            faster than 2.
        backend: where units run: ``local`` (this machine) or ``ray`` (a Ray cluster,
            :mod:`sap_rl.grid.ray_backend`). Changes only the speed, never a game.
        workers: units played at the same time: local processes or Ray actors (``None``: 1
            locally, one per CPU of a Ray cluster). Units are independent and seeded on their
            own, so this changes only the speed, never a game: give it the number of free cores.
        env_backend: what runs the games: ``gymnasium`` (the wrapper stack, the reference of
            every committed result) or ``ale_vector`` (ale-py's C++ ``AtariVectorEnv``, same
            pixels and games; :mod:`sap_rl.rl.ale_vector`). Part of the fingerprint only when
            not ``gymnasium``.
        checkpoint_every: seconds between two checkpoints inside a unit (local backend): a
            stopped run continues a long unit from its last checkpoint, to the same games
            (:mod:`sap_rl.rl.unit_resume`). A SIGTERM or Ctrl-C also saves one, at the end of
            the step; this bounds the work a hard kill loses. Never changes a game.
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
    perturb: Literal["stack", "last", "online"] = "stack"
    timed_threshold: float = 0.0
    timed_budget: float = 1.0
    epsilon: float = 0.0
    large_eps: float = DEFAULT_LARGE_EPS
    max_steps: int | None = None
    random_episodes: int = 10
    device: str = "auto"
    threads: int | None = None
    backend: Backend = "local"
    workers: int | None = None
    env_backend: EnvBackend = "gymnasium"
    checkpoint_every: float = 300.0

    def __post_init__(self) -> None:
        names = (
            "episodes",
            "n_envs",
            "eot_samples",
            "action_samples",
            "random_episodes",
        )
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        check_eot_samples(self.eot_samples)
        check_timed(self.timed_threshold, self.timed_budget)
        for name in ("max_steps", "threads", "workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):  # fmt: skip
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed!r}")
        self.large_eps = check_large_eps(self.large_eps, "large-eps")
        if (isinstance(self.checkpoint_every, bool)
                or not isinstance(self.checkpoint_every, int | float)
                or not self.checkpoint_every > 0):  # fmt: skip
            raise UserError(
                f"checkpoint-every must be a number of seconds > 0, got {self.checkpoint_every!r}"
            )
        self.checkpoint_every = float(self.checkpoint_every)
        if not 0.0 <= self.epsilon <= 1.0:
            raise UserError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        check_env_backend(self.env_backend, "env-backend")
        if self.perturb not in PERTURB_MODES:
            raise UserError(
                f"perturb must be one of {', '.join(PERTURB_MODES)}, got {self.perturb!r}"
            )
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


def plan_cells(config: AtariEvalConfig) -> list[Cell]:
    """The cells to play, in order: every defense's clean cell, then per attack defense x eps > 0.

    Attacks are played in the order they are listed, so a long grid that lists the cheap attack
    first (``fgsm`` before ``pgd-10-eot``) has finished its tables in that order when it is
    stopped by ``time_limit_s`` or interrupted.

    Example:
        >>> [c.name for c in plan_cells(AtariEvalConfig(eps=[4], attacks=["fgsm", "pgd-10"]))]
        ... # doctest: +NORMALIZE_WHITESPACE
        ['dense__clean', 'sap-100__clean', 'dense__fgsm__4', 'sap-100__fgsm__4',
         'dense__pgd-10__4', 'sap-100__pgd-10__4']
    """
    cells = [Cell(defense, None, 0.0) for defense in config.defenses]
    for attack in config.attacks:
        cells.extend(Cell(d, attack, e) for d in config.defenses for e in config.eps if e > 0)
    return cells
