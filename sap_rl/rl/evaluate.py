"""Relative reward of a trained Atari agent under attack, per defense (``sap-rl evaluate``).

For each cell (defense, attack, eps) the agent plays ``episodes`` whole games with the defense
inserted post hoc (:mod:`sap_rl.defenses`) and every observation attacked before it acts
(:mod:`sap_rl.rl.perturb`, batched over the parallel environments). How much reward survives is
reported per cell. This module is the orchestration; the settings and cells are in
:mod:`sap_rl.rl.eval_config`, the games in :mod:`sap_rl.rl.play`, the units, seeds and cell
files in :mod:`sap_rl.rl.evaluate_cells`, and running them in :mod:`sap_rl.grid`.

Matched games
    Game ``g`` (0 <= g < episodes) of **every** cell is played on an environment reset with seed
    ``seed + g``, whichever parallel environment slot, unit or worker plays it; exactly games
    ``0 .. episodes-1`` are collected (no bias toward short games). Cells therefore differ only
    by defense and attack. Actions are greedy (``epsilon`` > 0 takes a uniformly random action
    with that probability, drawn from a per-game generator seeded by ``(seed, g)``).
Clean cells
    eps = 0 is always played (``relative`` needs it), once per defense, and shared by every
    attack: no attack runs at eps = 0, so the games are the same whatever the attack.
Randomness
    Defense draws and PGD random starts are seeded per unit of ``n_envs`` games
    (:func:`sap_rl.rl.evaluate_cells.unit_seed`), so rerunning a cell reproduces it, on any
    backend and any number of workers; for stochastic defenses the draws depend on ``n_envs``
    (one draw per batched forward pass covers the unit's games).
Whole games
    Rewards are the unclipped game scores; games are capped by the environment at 27,000 agent
    steps, or about ``max_steps`` agent steps if set (the cap is ``4 * max_steps`` emulator frames,
    no-op starts included). Capped games count with the score reached and are logged.

Outputs in ``out``: ``episodes.csv`` (one row per game), ``summary.csv`` and
``summary.json`` (``mean``, ``std``, ``sem``, ``relative`` = mean / the same defense's eps = 0 mean,
``normalized`` = (mean - random score) / (dense clean mean - random score); the JSON adds the
resolved config, agent, random score and versions) and ``relative_reward.png``. Each finished cell
is saved atomically under ``cells/`` (and each finished unit of an unfinished one); rerunning the
same command skips finished cells and units, and settings that would change finished cells
(agent, episodes, seed, ...) are refused for an ``out`` that already holds results. The
random-policy score is the agent card's ``random_score`` or, if absent, measured once with a
seeded uniform random policy on the same game seeds and cached in ``out/random_score.json``.

Example:
    >>> cfg = AtariEvalConfig(agent="agents/krull-ddqn", eps=[0, 1], episodes=2)  # doctest: +SKIP
    >>> result = evaluate(cfg, "runs/demo")  # doctest: +SKIP
    >>> [(r.defense, r.eps, r.relative) for r in result.rows]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sap_rl.config import to_dict
from sap_rl.devices import resolve_device
from sap_rl.grid import (
    Work,
    check_run_file,
    make_executor,
    run_grid,
    set_threads,
    versions,
    write_run_file,
)
from sap_rl.io import atomic_write_json, check_out_dir, read_json
from sap_rl.lock import output_lock
from sap_rl.report import SummaryRow, plot_relative_reward, summarize, write_summary
from sap_rl.rl.agent import AgentCard, load_agent
from sap_rl.rl.agent_search import resolve_agent
from sap_rl.rl.eval_config import AtariEvalConfig, Cell, plan_cells
from sap_rl.rl.evaluate_cells import (
    AtariCells,
    GamePlayer,
    fingerprint,
    make_envs,
    units_of,
    write_episodes,
)
from sap_rl.rl.games import Game, resolve_game
from sap_rl.rl.play import GameRecord, play_matched_games, random_policy
from sap_rl.sanity import sanity_checks
from sap_rl.signals import sigterm_as_interrupt
from sap_rl.stats import paired_differences, with_worst

__all__ = ["EvalResult", "evaluate"]

logger = logging.getLogger(__name__)

RANDOM_FILE = "random_score.json"


@dataclass
class EvalResult:
    """What :func:`evaluate` produced: the summary rows, the output folder and run statistics."""

    rows: list[SummaryRow]
    out: Path
    meta: dict[str, Any]
    cells_played: int
    cells_skipped: int
    cells_missing: list[str] = field(default_factory=list)


def evaluate(
    config: AtariEvalConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    time_limit_s: float = 0.0,
) -> EvalResult:
    """Play every cell of ``config``, write the result files into ``out`` and return the summary.

    Everything is validated (agent files, game, names, budgets, a conflicting ``out``, the Ray
    cluster of ``--backend ray``) before anything is written. Finished cells and units found in
    ``out`` are reused. The run holds ``out``'s lock (:func:`sap_rl.lock.output_lock`) while it
    writes: a second run on ``out`` is refused.

    Args:
        config: the grid and settings.
        out: output folder (default ``runs/evaluate/<agent name>``).
        progress: show a progress bar over games on a terminal (stderr).
        time_limit_s: start no new unit after this many seconds (0: no limit). The summary then
            covers the finished cells, ``summary.json`` lists the missing ones under
            ``cells_missing``, and rerunning the same command plays them.

    Returns:
        The summary rows (as in ``summary.csv``) with the output folder and metadata.
    """
    folder = resolve_agent(config.agent)
    device = resolve_device(config.device)
    net, card = load_agent(folder, game=config.game, device=device)
    game = resolve_game(card.game)
    default_out = Path("runs") / "evaluate" / (card.name or folder.name)
    out_dir = check_out_dir(Path(out) if out is not None else default_out)
    stamp = fingerprint(card, game, config)
    cells = plan_cells(config)
    state = {name: value.detach().cpu() for name, value in net.state_dict().items()}
    # Local workers keep checkpoints inside long units in out_dir; Ray workers may run on nodes
    # without it (the driver writes every file), so their units restart when stopped.
    keep = str(out_dir) if config.backend == "local" else None
    work = Work(GamePlayer, (state, game.name, config, keep, stamp), threads=config.threads)
    # The executor first: joining a Ray cluster may fail, and then nothing is written. One
    # writer per folder: two runs of different settings would mix their files; the folder's
    # contents are checked under the lock, so no other run changes them meanwhile.
    with make_executor(config.backend, config.workers) as executor, output_lock(out_dir):
        check_run_file(out_dir, stamp, command="sap-rl evaluate")
        files = AtariCells(out_dir, stamp, cells, config.n_envs)
        for cell in cells:  # each finished cell must be of these settings (else: a UserError)
            files.load(cell.name)
        write_run_file(out_dir, stamp)
        logger.info("%s on %s: %d cells x %d games, %s backend with %d workers -> %s",
                    card.name, game.name, len(cells), config.episodes, config.backend,
                    executor.workers, out_dir)  # fmt: skip
        started = time.perf_counter()

        def may_start() -> bool:
            return time_limit_s <= 0 or time.perf_counter() - started < time_limit_s

        done: dict[str, list[GameRecord]] = {}

        def on_cell(name: str, games: list[GameRecord], seconds: float) -> None:
            done[name] = games
            write_episodes(out_dir, game, card, cells, done)
            _log_cell(name, games, seconds)

        restore_threads = set_threads(config.threads) if config.threads else None
        try:
            random_score, random_source = _random_score(card, config, game, out_dir)
            with sigterm_as_interrupt():  # a scheduler's stop keeps what Ctrl-C keeps
                run = run_grid(units_of(config, cells), files, work, executor,
                               may_start=may_start, on_cell=on_cell, progress=progress)  # fmt: skip
        finally:
            if restore_threads is not None:
                set_threads(*restore_threads)
        done = run.done
        if run.missing:
            logger.warning("time limit of %.0f s reached; %d cells left to play",
                           time_limit_s, len(run.missing))  # fmt: skip

        records = [(c.defense, attack, c.eps, g.reward)
                   for c in cells if c.name in done
                   for attack in _attacks_of(c, config) for g in done[c.name]]  # fmt: skip
        # The worst case over attacks, per game (games are matched across cells by index).
        records = with_worst(records, config.attacks)
        dense_clean = Cell("dense", None, 0.0).name in done
        baseline = None if dense_clean or card.clean_score.episodes == 0 else card.clean_score.mean
        rows = summarize(records, random_score=random_score, baseline_score=baseline)
        meta = _meta(config, card, folder, game, done, random_score, random_source, baseline)
        differences = paired_differences(records, seed=config.seed)
        meta["paired_differences"] = [asdict(d) for d in differences]
        # Gradient-masking flags: reward above the random policy's at a large budget, a transfer
        # or gradient-free attack beating the white-box ones (paired over the same games).
        checks = sanity_checks(rows, records, floor=random_score, large_eps=config.large_eps,
                               floor_name="the random policy", seed=config.seed)  # fmt: skip
        meta["checks"] = [asdict(c) for c in checks]
        # Per attacked cell: the fraction of steps attacked (timed attacks) and of steps whose
        # action the attack changed; cells of older versions have no counts and are left out.
        rates = {name: r for name in done if (r := files.rates(name)) is not None}
        if rates:
            meta["steps_under_attack"] = rates
        meta["cells_missing"] = run.missing
        meta["seconds"] = round(time.perf_counter() - started, 3)
        write_episodes(out_dir, game, card, cells, done)
        write_summary(out_dir, rows, meta)
        title = f"{card.name} ({game.name})"
        plot_relative_reward(rows, out_dir / "relative_reward.png", title=title)
        return EvalResult(rows, out_dir, meta, cells_played=len(run.played),
                          cells_skipped=len(run.reused), cells_missing=run.missing)  # fmt: skip


def _attacks_of(cell: Cell, config: AtariEvalConfig) -> list[str]:
    """Attacks whose tables a cell belongs to (a clean cell belongs to all of them)."""
    return list(config.attacks) if cell.attack is None else [cell.attack]


def _random_score(
    card: AgentCard, config: AtariEvalConfig, game: Game, out_dir: Path
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
    envs = make_envs(game, config)
    try:
        n_actions = int(envs[0].action_space.n)  # type: ignore[attr-defined]
        games = play_matched_games(
            envs, random_policy(n_actions, seed=config.seed), config.random_episodes,
            seed=config.seed,
        )  # fmt: skip
    finally:
        for env in envs:
            env.close()
    mean = float(np.mean([g.reward for g in games]))
    atomic_write_json(path, {"key": key, "mean": mean, "games": [asdict(g) for g in games]})
    return mean, f"measured over {len(games)} games of a uniform random policy"


def _meta(
    config: AtariEvalConfig,
    card: AgentCard,
    folder: Path,
    game: Game,
    done: dict[str, list[GameRecord]],
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
        "versions": versions("gymnasium", "ale_py", "stable_baselines3"),
    }


def _log_cell(name: str, games: Sequence[GameRecord], seconds: float) -> None:
    steps = sum(g.length for g in games)
    mean = float(np.mean([g.reward for g in games]))
    rate = steps / max(seconds, 1e-9)
    logger.info("%s: mean reward %.2f over %d games (%d steps, %.1f s of work, %.0f steps/s)",
                name, mean, len(games), steps, seconds, rate)  # fmt: skip
    capped = sum(g.truncated for g in games)
    if capped:
        logger.warning("%s: %d of %d games hit the length cap", name, capped, len(games))
