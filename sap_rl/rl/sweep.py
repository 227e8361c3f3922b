"""Training sweeps: several games and seeds on the grid engine's executors.

``sap-rl train --game Pong,Breakout --seed 0,1,2 [--backend local|ray] [--workers N]`` trains
one run per (game, seed), each a cell of one unit of :func:`sap_rl.grid.run_grid`, on the
executor of ``--backend`` (:mod:`sap_rl.grid.executors`: this process, N local processes, or Ray
actors). A run is an ordinary :func:`sap_rl.rl.train.train` run in its own folder,
``OUT/<game>-ddqn-<seed>`` (``OUT`` defaults to ``runs``, so a sweep's runs are where single runs
of the same game and seed go), with its ``config.yaml``, checkpoints and agent folder.

Where the files are:

- A run trains in its folder's absolute path *on the node that runs it*: on this machine that is
  the folder itself; on another node of a Ray cluster the same path on that node's disk. No
  shared file system is assumed.
- When a run ends, its ``agent/`` files (``model.safetensors``, ``card.json``), ``config.yaml``
  and ``eval.csv`` travel back as the unit's result (through Ray's object store with
  ``--backend ray``) and the driver writes them into the run folder on its own machine,
  atomically, the card last. A run whose agent folder is on the driver's disk at the asked
  ``timesteps`` is done, and a rerun of the same command skips it.
- Checkpoints stay on the node that trained: a run interrupted and run again (a rerun with
  ``--resume``, or a unit retried after its Ray worker died) continues from its checkpoint only
  if it lands on the same node; elsewhere it starts again from step 0.

``--resume`` on a sweep resumes every run that has a checkpoint (with its saved ``config.yaml``)
and starts the others. Without it, a run folder on this machine that holds a checkpoint but no
finished agent is refused before anything starts, as ``sap-rl train`` refuses it.

Example:
    >>> runs = plan_sweep(["Pong", "Breakout"], [0, 1], config=None, overrides={}, out="runs",
    ...                   resume=False)
    >>> [run.name for run in runs]
    ['pong-ddqn-0', 'pong-ddqn-1', 'breakout-ddqn-0', 'breakout-ddqn-1']
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sap_rl.config import deep_merge, from_dict, to_dict
from sap_rl.errors import UserError
from sap_rl.grid import Unit, Work, make_executor, run_grid, split_cell
from sap_rl.io import atomic_write_bytes, check_out_dir
from sap_rl.lock import output_lock
from sap_rl.rl.agent import CARD_FILE, MODEL_FILE
from sap_rl.rl.games import resolve_game
from sap_rl.rl.train_config import TrainConfig, load_train_config

__all__ = ["SweepRun", "plan_sweep", "resumed_config", "run_sweep"]

logger = logging.getLogger(__name__)

AGENT_DIR = "agent"  # as sap_rl.rl.train.AGENT_DIR (not imported: the trainer loads torch & SB3)
#: What travels back from a run, relative to its folder; the card last (it marks a finished run).
RETURNED_FILES = (
    "config.yaml",
    "eval.csv",
    f"{AGENT_DIR}/{MODEL_FILE}",
    f"{AGENT_DIR}/{CARD_FILE}",
)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep (a cell of the grid).

    Attributes:
        name: the run folder's name, ``<game>-<algorithm>-<seed>``; also the cell's name.
        game: the game's canonical name.
        config: the resolved :class:`TrainConfig` as plain values (sent to workers).
        out: the run folder's absolute path (the same path on every node).
    """

    name: str
    game: str
    config: dict[str, Any]
    out: str

    @property
    def timesteps(self) -> int:
        """The run's total environment steps."""
        return int(self.config["timesteps"])


def resumed_config(
    out: str | os.PathLike[str], overrides: dict[str, Any], *, game: str | None, seed: int | None
) -> tuple[str, TrainConfig]:
    """``(game, config)`` of the run in ``out`` for ``--resume``: its ``config.yaml`` + flags.

    Raises:
        UserError: no ``config.yaml``, or ``game``/``seed`` differ from the run's.
    """
    from sap_rl.rl.train import load_run_config  # the trainer's file format

    saved_game, saved = load_run_config(out)
    if game is not None and resolve_game(game).name != resolve_game(saved_game).name:
        raise UserError(f"--resume: {out} trains {saved_game}, not {game}")
    if seed is not None and seed != saved.seed:
        raise UserError(f"--resume: {out} uses seed {saved.seed}; drop --seed")
    return saved_game, from_dict(TrainConfig, deep_merge(to_dict(saved), overrides))


def plan_sweep(
    games: Sequence[str],
    seeds: Sequence[int],
    *,
    config: str | None,
    overrides: dict[str, Any],
    out: str | os.PathLike[str],
    resume: bool,
) -> list[SweepRun]:
    """The runs of a sweep, game by game then seed by seed, each with its resolved config.

    With ``resume``, a run folder (on this machine) with a ``config.yaml`` keeps that config
    (flags such as ``--timesteps`` still apply); the others get ``config`` with the flags.

    Raises:
        UserError: an unknown game, a game or seed listed twice, a bad config, or (without
            ``resume``) a run folder holding an unfinished checkpoint.
    """
    names = [resolve_game(game).name for game in games]
    for kind, values in (("game", names), ("seed", list(seeds))):
        if len(set(values)) != len(values):
            raise UserError(f"--{kind} lists a {kind} twice: {','.join(map(str, values))}")
    root = check_out_dir(out)
    runs = []
    for game in names:
        for seed in seeds:
            base = load_train_config(config, game=game, overrides={**overrides, "seed": seed})
            folder = (root / f"{game.lower()}-{base.algorithm.lower()}-{seed}").absolute()
            cfg = base
            if resume and (folder / "config.yaml").is_file():
                _, cfg = resumed_config(folder, overrides, game=game, seed=seed)
            runs.append(SweepRun(folder.name, game, to_dict(cfg), str(folder)))
    if not resume:
        for run in runs:
            if _has_checkpoint(Path(run.out)) and not _finished(run):
                raise UserError(f"{run.out} already has a checkpoint; pass --resume to continue "
                                "the sweep's runs or choose another --out")  # fmt: skip
    return runs


def _has_checkpoint(folder: Path) -> bool:
    from sap_rl.rl.checkpoint import CHECKPOINT_DIR, STATE_FILE

    return (folder / CHECKPOINT_DIR / STATE_FILE).is_file()


def _card_timesteps(folder: Path) -> int | None:
    try:
        card = json.loads((folder / AGENT_DIR / CARD_FILE).read_text(encoding="utf-8"))
        return int(card["timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finished(run: SweepRun) -> bool:
    """Whether ``run``'s agent folder is on this machine's disk at the run's ``timesteps``."""
    folder = Path(run.out)
    steps = _card_timesteps(folder)
    return (
        steps is not None and steps >= run.timesteps and (folder / AGENT_DIR / MODEL_FILE).is_file()
    )


class RunTrainer:
    """A worker's unit runner: trains the run of a unit and returns its files (module docs)."""

    def __init__(self, runs: dict[str, SweepRun], time_limit_s: float, bars: bool) -> None:
        self.runs, self.time_limit_s, self.bars = runs, time_limit_s, bars

    def __call__(self, unit: Unit, report: Any) -> dict[str, bytes]:
        from sap_rl.rl.checkpoint import load_checkpoint_state
        from sap_rl.rl.train import train

        run = self.runs[unit.cell]
        folder = Path(run.out)
        state = load_checkpoint_state(folder)
        steps = state.timesteps if state is not None else None
        # Trained here before, its agent folder not yet on the driver's disk (a driver killed
        # after the run ended): send it again rather than refuse to train past --timesteps.
        trained_here = steps is not None and steps >= run.timesteps
        if not (trained_here and _card_timesteps(folder) == steps):
            # A checkpoint on this node is this run's (a resumed sweep, or a retried unit).
            cfg = from_dict(TrainConfig, run.config)
            cfg.progress_bar = cfg.progress_bar and self.bars
            train(run.game, cfg, out=folder, resume=state is not None,
                  time_limit_s=self.time_limit_s)  # fmt: skip
        report(1)
        return {name: (folder / name).read_bytes() for name in RETURNED_FILES
                if (folder / name).is_file()}  # fmt: skip


class RunFolders:
    """The sweep's cells: a run is finished when its agent folder is on the driver's disk."""

    def __init__(self, out: Path, runs: dict[str, SweepRun]) -> None:
        self.out, self.runs = out, runs
        self.fingerprint: Any = {"runs": sorted(runs)}

    def load(self, cell: str) -> Any | None:
        run = self.runs[cell]
        return _summary(run) if _finished(run) else None

    def save(self, cell: str, results: list[Any]) -> Any:
        (files,) = results
        run = self.runs[cell]
        # One writer per run folder: the driver writes what the worker sent, the card last.
        with output_lock(Path(run.out)) as folder:
            for name in RETURNED_FILES:
                if name in files:
                    atomic_write_bytes(folder / name, files[name])
        return _summary(run)


def _summary(run: SweepRun) -> dict[str, Any]:
    card = json.loads((Path(run.out) / AGENT_DIR / CARD_FILE).read_text(encoding="utf-8"))
    return {"agent": str(Path(run.out) / AGENT_DIR), "game": card["game"],
            "timesteps": card["timesteps"], "clean_score": card["clean_score"],
            "random_score": card.get("random_score")}  # fmt: skip


def run_sweep(
    runs: Sequence[SweepRun],
    out: str | os.PathLike[str],
    *,
    backend: str = "local",
    workers: int | None = None,
    time_limit_s: float = 0.0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Train ``runs`` (from :func:`plan_sweep`) on ``backend`` and bring their agents back.

    Args:
        runs: the sweep's runs.
        out: the sweep folder (holds the run folders, ``timings.json`` and, while it runs, its
            ``.lock``).
        backend: ``local`` or ``ray``.
        workers: runs trained at once (``None``: 1 locally, every CPU of a Ray cluster).
        time_limit_s: each run's wall-clock limit (``sap-rl train --time-limit``), 0 for none.
        progress: the engine's bar over runs, and with one local worker each run's own bar.

    Returns:
        Each run's summary (agent folder, game, steps, clean and random scores), by run name.

    Example:
        >>> runs = plan_sweep(["Breakout"], [0, 1], config="ddqn_cpu", out="/tmp/sweep",
        ...                   overrides={"timesteps": 2000}, resume=False)
        >>> done = run_sweep(runs, "/tmp/sweep", workers=2)  # doctest: +SKIP
        >>> done["breakout-ddqn-1"]["agent"]  # doctest: +SKIP
        '/tmp/sweep/breakout-ddqn-1/agent'
    """
    by_name = {run.name: run for run in runs}
    root = check_out_dir(out)
    executor = make_executor(backend, workers)
    # Several runs' step bars at once would garble the terminal: only with one local worker.
    bars = progress and backend == "local" and executor.workers == 1
    threads = max(int(run.config["torch_threads"]) for run in runs) or None
    work = Work(RunTrainer, (by_name, time_limit_s, bars), threads=threads)
    cells = {run.name: split_cell(run.name, 1, 1) for run in runs}
    with executor, output_lock(root):
        grid = run_grid(cells, RunFolders(root, by_name), work, executor, progress=progress,
                        unit_name="run")  # fmt: skip
    if grid.missing:
        raise RuntimeError(f"runs not trained: {', '.join(grid.missing)}")
    return grid.done
