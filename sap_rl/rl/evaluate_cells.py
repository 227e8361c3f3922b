"""The cells of ``sap-rl evaluate`` on the grid engine: units of games, their seeds, cell files.

Units
    A cell's ``episodes`` games are split into units of ``n_envs`` consecutive games
    (:func:`units_of`); a unit's games are played at once, batched through one attack, on
    ``n_envs`` parallel environments. Units are what workers run: a long game holds up its own
    unit, not its whole cell, and a grid has more units than cells to spread over workers.
Seeds
    Each unit has its own seed (:func:`unit_seed`): the first unit of a cell uses the cell's seed
    from ``(seed, defense, attack, eps)``, so a cell of at most ``n_envs`` games is exactly what
    sap-rl 0.1.0 played; unit ``k > 0`` uses ``(seed, defense, attack, eps, first game)``. Defense
    draws and PGD random starts come from that seed; a game's own streams (env seed ``seed + g``,
    exploration) from ``(seed, g)``. So the split and the seeds depend on the settings only,
    never on the backend, the worker count or the order units run in.
Cell files
    ``cells/<cell>.json``: the cell, the fingerprint, ``n_envs``, the steps and the games, in
    game order; no timings (those go to ``timings.json``), so a cell file is byte-identical
    wherever its units ran. Older files (with ``seconds``) are read as they are.

Example:
    >>> from sap_rl.rl.eval_config import AtariEvalConfig
    >>> cfg = AtariEvalConfig(episodes=5, n_envs=2, defenses=["dense"], eps=[])
    >>> [(u.cell, u.start, u.stop) for u in units_of(cfg, plan_cells(cfg))["dense__clean"]]
    [('dense__clean', 0, 2), ('dense__clean', 2, 4), ('dense__clean', 4, 5)]
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from sap_rl.attacks import parse_attack
from sap_rl.defenses import parse_defense
from sap_rl.devices import resolve_device
from sap_rl.errors import UserError
from sap_rl.grid.store import cell_path, load_partial, save_partial
from sap_rl.grid.units import Unit, split_cell, stable_seed
from sap_rl.io import atomic_write_json, read_json
from sap_rl.report import write_csv
from sap_rl.rl.agent import AgentCard, QNetwork
from sap_rl.rl.envs import DEFAULT_ENV_BACKEND
from sap_rl.rl.eval_config import AtariEvalConfig, Cell, plan_cells
from sap_rl.rl.games import Game, resolve_game
from sap_rl.rl.perturb import ObservationAttack, StepCounts
from sap_rl.rl.play import (
    GameRecord,
    PlayState,
    agent_policy,
    make_eval_envs,
    play_matched_games,
    preprocessing_for,
)
from sap_rl.rl.unit_resume import (
    ResumeError,
    decode_play_state,
    encode_play_state,
    random_state,
    restore_random_state,
)
from sap_rl.signals import stop_between_steps

__all__ = [
    "EPISODE_COLUMNS",
    "STEP_FIELDS",
    "AtariCells",
    "GamePlayer",
    "fingerprint",
    "make_envs",
    "play_unit",
    "step_rates",
    "unit_seed",
    "units_of",
    "write_episodes",
]

#: Per-game fields of an attacked cell's file: the agent's decisions (its steps as the policy saw
#: them; a game's ``length`` may also count the env's own reset steps), those attacked, and those
#: whose action the attack changed.
STEP_FIELDS = ("policy_steps", "attacked_steps", "changed_steps")

logger = logging.getLogger(__name__)

EPISODE_COLUMNS = (
    "game", "agent", "defense", "attack", "eps", "seed", "episode", "reward", "length",
)  # fmt: skip


def fingerprint(card: AgentCard, game: Game, config: AtariEvalConfig) -> dict[str, Any]:
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
        # only off the default backend: the folders of earlier runs keep their fingerprint
        **(
            {"env_backend": config.env_backend} if config.env_backend != DEFAULT_ENV_BACKEND else {}
        ),
        # only with a timed attack: the folders of earlier runs keep their fingerprint
        **(
            {"timed_threshold": config.timed_threshold, "timed_budget": config.timed_budget}
            if any(parse_attack(a).timed for a in config.attacks)
            else {}
        ),
    }


def units_of(config: AtariEvalConfig, cells: Sequence[Cell]) -> dict[str, list[Unit]]:
    """Each cell's units: its games in consecutive runs of ``n_envs`` (module docs)."""
    return {c.name: split_cell(c.name, config.episodes, config.n_envs) for c in cells}


def unit_seed(seed: int, cell: Cell, unit: Unit) -> int:
    """The seed of a unit's defense draws and attack randomness (module docs).

    Example:
        >>> cell = Cell("sap-100", "fgsm", 1.0)
        >>> unit_seed(0, cell, split_cell(cell.name, 4, 4)[0]) == stable_seed(0, *cell_key(cell))
        True
    """
    if unit.index == 0:
        return stable_seed(seed, *cell_key(cell))
    return stable_seed(seed, *cell_key(cell), unit.start)


def cell_key(cell: Cell) -> tuple[str, str | None, float]:
    """``(defense, attack, eps)``: what a cell's seed is made from."""
    return cell.defense, cell.attack, cell.eps


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block and restore them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def make_envs(game: Game, config: AtariEvalConfig) -> list[gym.Env]:
    """The evaluation environments one unit needs (``min(n_envs, episodes)``), on the config's
    ``env_backend``."""
    preprocessing = preprocessing_for(config.max_steps, config.env_backend)
    return make_eval_envs(game, min(config.n_envs, config.episodes), preprocessing)


def play_unit(
    net: torch.nn.Module,
    cell: Cell,
    unit: Unit,
    config: AtariEvalConfig,
    envs: Sequence[gym.Env],
    device: torch.device,
    *,
    on_game: Callable[[GameRecord], None] | None = None,
    counts: dict[int, StepCounts] | None = None,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> list[GameRecord]:
    """Play the games of ``unit`` with ``cell``'s defense inserted and its attack active.

    Args:
        counts: if given, receives each attacked game's steps, steps attacked and steps with a
            changed action (:meth:`ObservationAttack.act`).
        resume: a state that ``save`` got in an earlier call with the same arguments: the unit
            continues from it (:mod:`sap_rl.rl.unit_resume`) to the same games. A state that
            does not fit raises :class:`~sap_rl.rl.unit_resume.ResumeError` before any play.
        save: called with the unit's JSON-able state every ``config.checkpoint_every`` seconds
            (between two steps). With ``save``, a SIGTERM or Ctrl-C during play waits for the
            end of the step, saves it and raises :class:`KeyboardInterrupt`
            (:func:`sap_rl.signals.stop_between_steps`); a second Ctrl-C interrupts at once.
    """
    seed = unit_seed(config.seed, cell, unit)
    model = parse_defense(cell.defense).apply(net).to(device).eval()
    attack = ObservationAttack(
        model,
        cell.attack,
        cell.eps,
        perturb=config.perturb,
        eot_samples=config.eot_samples,
        action_samples=config.action_samples,
        generator=torch.Generator().manual_seed(seed),
        record=counts is not None,
        timed_threshold=config.timed_threshold,
        timed_budget=config.timed_budget,
    )
    if counts is not None:
        attack.counts = counts
    rngs: dict[int, np.random.Generator] = {}
    policy = agent_policy(attack, device=device, epsilon=config.epsilon, seed=config.seed,
                          rngs=rngs)  # fmt: skip
    on_step = None
    stopping: contextlib.AbstractContextManager[Callable[[], bool]]
    stopping = contextlib.nullcontext(lambda: False)
    if save is not None:
        saved = time.monotonic()
        # A stop (SIGTERM, Ctrl-C) waits for the end of the step and saves it: nothing is lost.
        stopping = stop_between_steps()

        def on_step(state: PlayState) -> None:
            nonlocal saved
            stop = stop_requested()
            if stop or time.monotonic() - saved >= config.checkpoint_every:
                save({"play": encode_play_state(state),
                      "random": random_state(attack, rngs, device)})  # fmt: skip
                saved = time.monotonic()
            if stop:
                raise KeyboardInterrupt("stopped between two steps; the unit's state is saved")

    with _seeded_torch(seed, device), stopping as stop_requested:
        state = None
        if resume is not None:
            if not isinstance(resume, dict) or not {"play", "random"} <= resume.keys():
                raise ResumeError("not a saved state of a unit")
            state = decode_play_state(resume["play"], min(len(envs), unit.size), unit.start,
                                      unit.size)  # fmt: skip
            restore_random_state(resume["random"], attack, rngs, device)
            for record in sorted(state.records.values(), key=lambda r: r.episode):
                if on_game is not None:
                    on_game(record)
        return play_matched_games(envs[: unit.size], policy, unit.size, seed=config.seed,
                                  first=unit.start, on_game=on_game, resume=state,
                                  on_step=on_step)  # fmt: skip


class GamePlayer:
    """A worker's unit runner: the agent's network and envs, built once from its weights.

    With ``out`` (the output folder, on a file system this worker shares with the driver), a
    unit keeps a checkpoint every ``config.checkpoint_every`` seconds
    (:func:`sap_rl.grid.store.save_partial`) and a unit stopped mid-way continues from it, to the
    same games; ``stamp`` is the fingerprint checkpoints are made with.
    """

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        game_name: str,
        config: AtariEvalConfig,
        out: str | None = None,
        stamp: dict[str, Any] | None = None,
    ) -> None:
        net = QNetwork(int(state["head.weight"].shape[0]))
        net.load_state_dict(state)
        self.device = resolve_device(config.device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.cells = {c.name: c for c in plan_cells(config)}
        self.envs = make_envs(resolve_game(game_name), config)
        self.out = None if out is None else Path(out)
        self.stamp = stamp

    def __call__(self, unit: Unit, report: Callable[[int], None]) -> list[dict[str, Any]]:
        cell = self.cells[unit.cell]
        counts: dict[int, StepCounts] | None = None if cell.attack is None else {}
        resume, save = None, None
        if self.out is not None:
            out, stamp = self.out, self.stamp
            kept = load_partial(out, unit, stamp)
            if kept is not None and (not isinstance(kept[0], dict)
                                     or kept[0].get("device") != self.device.type):  # fmt: skip
                kept = None  # another device's generators: play the unit afresh
            resume = None if kept is None else kept[0]
            earlier, started = (0.0 if kept is None else kept[1]), time.perf_counter()
            if kept is not None:
                logger.info("%s: continuing from its checkpoint (%.0f s of work kept)",
                            unit.key, earlier)  # fmt: skip

            def save(state: dict[str, Any]) -> None:
                seconds = earlier + time.perf_counter() - started
                save_partial(out, unit, state | {"device": self.device.type}, stamp, seconds)

        def play(resume: dict[str, Any] | None) -> list[GameRecord]:
            return play_unit(self.net, cell, unit, self.config, self.envs, self.device,
                             on_game=lambda _: report(1), counts=counts, resume=resume,
                             save=save)  # fmt: skip

        try:
            games = play(resume)
        except ResumeError as err:
            logger.warning("%s: cannot continue from its checkpoint (%s); playing it afresh",
                           unit.key, err)  # fmt: skip
            if counts is not None:
                counts.clear()
            games = play(None)
        if counts is None or cell.eps == 0:
            return [asdict(g) for g in games]
        return [asdict(g) | _step_fields(counts.get(g.episode, StepCounts())) for g in games]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _step_fields(count: StepCounts) -> dict[str, int]:
    """A game's extra fields in an attacked cell's file (older files have none)."""
    return {
        "policy_steps": count.steps,
        "attacked_steps": count.attacked,
        "changed_steps": count.changed,
    }


def _record(game: dict[str, Any]) -> GameRecord:
    """The :class:`GameRecord` of a stored game dict (its step fields left out)."""
    return GameRecord(**{k: v for k, v in game.items() if k not in STEP_FIELDS})


def step_rates(games: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """An attacked cell's ``attacked_fraction`` and ``action_change_rate`` over all its steps.

    ``None`` for a cell without the counts (clean cells, files of older versions).

    Example:
        >>> step_rates([{"policy_steps": 10, "attacked_steps": 5, "changed_steps": 2},
        ...             {"policy_steps": 30, "attacked_steps": 5, "changed_steps": 6}])
        {'attacked_fraction': 0.25, 'action_change_rate': 0.2}
    """
    if not games or any(f not in g for g in games for f in STEP_FIELDS):
        return None
    steps = sum(int(g["policy_steps"]) for g in games)
    if steps == 0:
        return None
    return {
        "attacked_fraction": sum(int(g["attacked_steps"]) for g in games) / steps,
        "action_change_rate": sum(int(g["changed_steps"]) for g in games) / steps,
    }


class AtariCells:
    """The cell files of ``sap-rl evaluate`` (:class:`sap_rl.grid.engine.CellFiles`)."""

    def __init__(
        self, out: Path, fingerprint: dict[str, Any], cells: Sequence[Cell], n_envs: int
    ) -> None:
        self.out, self.fingerprint, self.n_envs = out, fingerprint, n_envs
        self.cells = {c.name: c for c in cells}

    def load(self, cell: str) -> list[GameRecord] | None:
        """A finished cell's games, ``None`` if not played yet; other settings are an error."""
        path = cell_path(self.out, cell)
        if not path.is_file():
            return None
        data = read_json(path)
        try:
            games = [_record(g) for g in data["games"]]
            stored = data["fingerprint"]
        except (KeyError, TypeError) as err:
            raise UserError(
                f"{path}: not a cell file of sap-rl evaluate ({err}); delete it"
            ) from None
        if stored != self.fingerprint or len(games) != self.fingerprint["episodes"]:
            raise UserError(
                f"{path} was played with other settings; use another --out or delete that folder"
            )
        return games

    def save(self, cell: str, results: list[Any]) -> list[GameRecord]:
        """Write ``cell`` from its units' games (lists of game dicts, in unit order)."""
        stored = [g for unit_games in results for g in unit_games]
        games = [_record(g) for g in stored]
        c = self.cells[cell]
        rates = step_rates(stored)
        atomic_write_json(
            cell_path(self.out, cell),
            {
                "defense": c.defense,
                "attack": c.attack,
                "eps": c.eps,
                "fingerprint": self.fingerprint,
                "n_envs": self.n_envs,
                "steps": sum(g.length for g in games),
                **(rates or {}),
                "games": [asdict(g) | {k: s[k] for k in STEP_FIELDS if k in s}
                          for g, s in zip(games, stored, strict=True)],
            },
        )  # fmt: skip
        return games

    def rates(self, cell: str) -> dict[str, float] | None:
        """A finished attacked cell's attacked fraction and action-change rate (step_rates)."""
        path = cell_path(self.out, cell)
        if not path.is_file():
            return None
        games = read_json(path).get("games")
        return step_rates(games) if isinstance(games, list) else None


def write_episodes(
    out_dir: Path,
    game: Game,
    card: AgentCard,
    cells: Sequence[Cell],
    done: dict[str, list[GameRecord]],
) -> None:
    """``episodes.csv``: a row per game of each finished cell (clean cells under every attack)."""
    attacks = list(dict.fromkeys(c.attack for c in cells if c.attack is not None))
    rows = [
        (game.name, card.name, c.defense, attack, c.eps, g.seed, g.episode, g.reward, g.length)
        for c in cells if c.name in done
        for attack in (attacks or ["none"] if c.attack is None else [c.attack])
        for g in done[c.name]
    ]  # fmt: skip
    write_csv(out_dir / "episodes.csv", EPISODE_COLUMNS, rows)
