"""Helpers shared by the sweep scripts (``eot_sweep.py``, ``eot_sweep_atari.py``,
``timed_sweep.py``): list arguments, per-cell statistics, the CSV and the plot.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import this module by its plain name.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "add_atari_args",
    "atari_base",
    "atari_cell",
    "atari_config",
    "cell_row",
    "errorbar_plot",
    "floats",
    "ints",
    "markdown_table",
    "mean_sem",
    "paired_to_reference",
    "write_rows",
]

ROOT = Path(__file__).resolve().parents[1]


def ints(text: str) -> list[int]:
    """A comma-separated list of integers (an argparse ``type``).

    Example:
        >>> ints("1, 4,16,")
        [1, 4, 16]
    """
    return [int(v) for v in text.split(",") if v.strip()]


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers (an argparse ``type``).

    Example:
        >>> floats("0,0.05, 1")
        [0.0, 0.05, 1.0]
    """
    return [float(v) for v in text.split(",") if v.strip()]


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std with n - 1; 0 for a single value).

    Example:
        >>> mean_sem([1.0, 3.0])
        (2.0, 1.0)
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_to_reference(
    values: Mapping[Any, Sequence[float]], reference: Any, *, seed: int
) -> dict[Any, tuple[float, float, float]]:
    """Each key's mean paired difference to ``values[reference]`` with a bootstrap 95% CI.

    The values of every key are matched by position (the same games or images), so the
    differences are taken pair by pair (:func:`sap_rl.stats.bootstrap_mean_ci`, seeded).

    Returns:
        ``{key: (mean difference, ci_low, ci_high)}``.

    Example:
        >>> paired_to_reference({1: [2.0, 4.0], 2: [1.0, 3.0]}, 2, seed=0)
        {1: (1.0, 1.0, 1.0), 2: (0.0, 0.0, 0.0)}
    """
    from sap_rl.stats import bootstrap_mean_ci

    ref = values[reference]
    out = {}
    for key, vals in values.items():
        diffs = [float(a) - float(b) for a, b in zip(vals, ref, strict=True)]
        low, high = bootstrap_mean_ci(diffs, seed=seed)
        out[key] = (sum(diffs) / len(diffs), low, high)
    return out


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> str:
    """``rows`` as a Markdown table of ``columns`` ``(header, key, float format)``; a missing or
    non-float value is printed as it is (empty if missing).

    Example:
        >>> print(markdown_table([{"a": 1.25, "b": ""}], [("A", "a", ".1f"), ("B", "b", "")]))
        | A | B |
        |---:|---:|
        | 1.2 |  |
    """
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "---:|" * len(columns)]  # fmt: skip
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key, "")
            cells.append(format(value, fmt) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_rows(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as a CSV with ``columns`` (floats rounded to 4 decimals, missing: empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n",
                                extrasaction="ignore")  # fmt: skip
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def errorbar_plot(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    references: Mapping[str, float] | None = None,
) -> None:
    """One error-bar line per series ``{label: (x, y, sem)}``, saved as a PNG (no legend for one
    unlabelled series, i.e. label ``""``); ``references``: labelled dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, (x, y, sem) in series.items():
        ax.errorbar(x, y, yerr=sem, marker="o", capsize=3, label=label or None)
    for (label, level), style in zip((references or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if any(series) or references:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the Atari sweeps (eot_sweep_atari.py, timed_sweep.py) ---


def add_atari_args(parser: argparse.ArgumentParser, *, work: str, out: str) -> None:
    """The arguments both Atari sweeps take (an ``argparse.ArgumentParser``)."""
    parser.add_argument("--agent", default="roadrunner-ddqn", help="agent folder or name")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/eval/study.yaml",
                        help="eval config of the other settings (games, seed, n_envs)")  # fmt: skip
    parser.add_argument("--eps", type=float, default=1.0, help="budget in grey levels")
    parser.add_argument("--episodes", type=int, help="games per cell (default: config's)")
    parser.add_argument("--max-steps", type=int, help="cap games at about N agent steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / work, help="one folder per setting")
    parser.add_argument("--out", type=Path, default=ROOT / out)
    parser.add_argument("--no-plot", action="store_true")


def atari_base(args: Any, **settings: Any) -> dict[str, Any]:
    """The eval config of ``args.config`` with the sweep's arguments and ``settings`` on top."""
    from sap_rl.config import load_yaml

    base: dict[str, Any] = load_yaml(args.config)
    base.update(agent=args.agent, eps=[args.eps], threads=args.threads, **settings)
    if args.episodes is not None:
        base["episodes"] = args.episodes
    if args.max_steps is not None:
        base["max_steps"] = args.max_steps
    return base


def atari_config(parser: argparse.ArgumentParser, base: Mapping[str, Any], **settings: Any) -> Any:
    """An :class:`~sap_rl.rl.eval_config.AtariEvalConfig` of ``base`` and ``settings``; a bad
    value is a one-line ``parser.error`` (exit code 2), before anything is played."""
    from sap_rl.config import from_dict
    from sap_rl.errors import UserError
    from sap_rl.rl.eval_config import AtariEvalConfig

    try:
        return from_dict(AtariEvalConfig, {**base, **settings})
    except UserError as err:
        parser.error(str(err))


def atari_cell(work: Path, defense: str, attack: str | None, eps: float) -> dict[str, Any]:
    """A finished cell of an ``evaluate`` folder: ``rewards`` in game order, ``seconds`` of work
    (``timings.json``; ``""`` if not recorded) and, for an attacked cell with step counts,
    ``attacked_fraction`` and ``action_change_rate`` (else ``""``)."""
    from sap_rl.grid.store import TIMINGS_FILE, cell_path
    from sap_rl.io import read_json
    from sap_rl.rl.eval_config import Cell
    from sap_rl.rl.evaluate_cells import step_rates

    name = Cell(defense, attack, eps if attack else 0.0).name
    games = read_json(cell_path(work, name))["games"]
    timings = work / TIMINGS_FILE
    seconds = read_json(timings).get("cells", {}).get(name, "") if timings.is_file() else ""
    rates = step_rates(games) or {}
    return {
        "rewards": [float(g["reward"]) for g in games],
        "seconds": seconds,
        "attacked_fraction": rates.get("attacked_fraction", ""),
        "action_change_rate": rates.get("action_change_rate", ""),
    }


def cell_row(cell: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A CSV row of an :func:`atari_cell`: ``fields`` and the cell's ``n``, ``mean``, ``sem``,
    ``attacked_fraction``, ``action_change_rate`` and ``seconds``."""
    mean, sem = mean_sem(cell["rewards"])
    rates = {k: cell[k] for k in ("attacked_fraction", "action_change_rate", "seconds")}
    return {**fields, "n": len(cell["rewards"]), "mean": mean, "sem": sem, **rates}
