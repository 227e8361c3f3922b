"""Result tables and plots shared by the RL and vision evaluators.

A *record* is one measured value in one cell: ``(defense, attack, eps, value)`` where ``value`` is
an episode's reward (RL) or an example's 0/1 correctness (vision). :func:`summarize` reduces them
to one :class:`SummaryRow` per (defense, attack, eps):

- ``mean``, ``std`` (sample standard deviation), ``sem`` (standard error of the mean), ``n``;
- ``relative`` = mean / mean of the same defense at eps = 0 (the SAP paper's relative reward);
- ``normalized`` = (mean - random score) / (dense clean mean - random score).

Example:
    >>> records = [("dense", "fgsm", 0.0, 20.0), ("dense", "fgsm", 0.0, 18.0)]
    >>> records.append(("dense", "fgsm", 1.0, 9.5))
    >>> rows = summarize(records, random_score=-20.0)
    >>> [(r.eps, r.mean, round(r.relative, 3), round(r.normalized, 3)) for r in rows]
    [(0.0, 19.0, 1.0, 1.0), (1.0, 9.5, 0.5, 0.756)]
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sap_rl.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "SummaryRow",
    "plot_metric",
    "read_summary_csv",
    "save_figure",
    "summarize",
    "write_csv",
    "write_summary",
]

Record = tuple[str, str, float, float]


@dataclass(frozen=True)
class SummaryRow:
    """One (defense, attack, eps) cell of a results table."""

    defense: str
    attack: str
    eps: float
    n: int
    mean: float
    std: float
    sem: float
    relative: float
    normalized: float


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 and math.isfinite(denominator) else math.nan


def summarize(
    records: Iterable[Record],
    *,
    random_score: float,
    baseline_score: float | None = None,
) -> list[SummaryRow]:
    """Reduce per-episode (or per-example) records to one row per (defense, attack, eps).

    Args:
        records: ``(defense, attack, eps, value)`` tuples.
        random_score: score of a uniformly random policy (RL) or chance accuracy (vision).
        baseline_score: the dense model's clean score for ``normalized``; by default the mean of
            the ``dense`` records at eps = 0.

    Returns:
        Rows sorted by defense (in order of first appearance), attack, then eps. ``relative`` is
        NaN when the same defense has no eps = 0 cell (or it averages 0), ``normalized`` is NaN
        when no dense clean score is known.
    """
    cells: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    order: dict[str, int] = {}
    for defense, attack, eps, value in records:
        order.setdefault(defense, len(order))
        cells[(defense, attack, float(eps))].append(float(value))

    def mean_of(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    clean: dict[tuple[str, str], float] = {}
    clean_any: dict[str, list[float]] = defaultdict(list)
    for (defense, attack, eps), values in cells.items():
        if eps == 0.0:
            clean[(defense, attack)] = mean_of(values)
            clean_any[defense].extend(values)
    if baseline_score is None and clean_any.get("dense"):
        baseline_score = mean_of(clean_any["dense"])

    rows = []
    for (defense, attack, eps), values in cells.items():
        n = len(values)
        mean = mean_of(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        reference = clean.get((defense, attack))
        if reference is None and clean_any.get(defense):
            reference = mean_of(clean_any[defense])
        relative = _ratio(mean, reference) if reference is not None else math.nan
        normalized = (
            _ratio(mean - random_score, baseline_score - random_score)
            if baseline_score is not None
            else math.nan
        )
        rows.append(
            SummaryRow(defense, attack, eps, n, mean, std, std / math.sqrt(n), relative, normalized)
        )
    rows.sort(key=lambda r: (order[r.defense], r.attack, r.eps))
    return rows


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Write a CSV file atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_summary(
    out_dir: str | os.PathLike[str], rows: Sequence[SummaryRow], meta: Mapping[str, Any]
) -> None:
    """Write ``summary.csv`` and ``summary.json`` (the rows plus ``meta``) into ``out_dir``."""
    out = Path(out_dir)
    header = [f.name for f in fields(SummaryRow)]
    write_csv(out / "summary.csv", header, ([getattr(r, h) for h in header] for r in rows))
    payload = dict(meta)
    payload["summary"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
        for r in rows
    ]
    atomic_write_json(out / "summary.json", payload)


def read_summary_csv(path: str | os.PathLike[str]) -> list[SummaryRow]:
    """Read a ``summary.csv`` written by :func:`write_summary`."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            SummaryRow(
                defense=row["defense"],
                attack=row["attack"],
                eps=float(row["eps"]),
                n=int(row["n"]),
                mean=float(row["mean"]),
                std=float(row["std"]),
                sem=float(row["sem"]),
                relative=float(row["relative"]),
                normalized=float(row["normalized"]),
            )
            for row in csv.DictReader(handle)
        ]


def plot_metric(
    rows: Sequence[SummaryRow],
    path: str | os.PathLike[str],
    *,
    metric: str = "relative",
    ylabel: str | None = None,
    title: str | None = None,
) -> None:
    """Plot ``metric`` against eps, one panel per attack, one line per defense with SEM error bars.

    ``metric`` is ``"relative"``, ``"normalized"`` or ``"mean"``; error bars are the SEM scaled the
    same way as the metric. The x axis is symmetric-log so that eps = 0 is shown beside 0.5 .. 32.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in ("relative", "normalized", "mean"):
        raise ValueError(f"metric must be 'relative', 'normalized' or 'mean', got {metric!r}")
    attacks = list(dict.fromkeys(r.attack for r in rows))
    defenses = list(dict.fromkeys(r.defense for r in rows))
    fig, axes = plt.subplots(
        1, max(1, len(attacks)), figsize=(4.2 * max(1, len(attacks)), 3.6), squeeze=False
    )
    for ax, attack in zip(axes[0], attacks, strict=False):
        for defense in defenses:
            cell = sorted((r for r in rows if r.attack == attack and r.defense == defense),
                          key=lambda r: r.eps)  # fmt: skip
            if not cell:
                continue
            ys = [getattr(r, metric) for r in cell]
            errs = [_scaled_sem(r, metric) for r in cell]
            ax.errorbar([r.eps for r in cell], ys, yerr=errs, marker="o", ms=3, capsize=2,
                        label=defense)  # fmt: skip
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_xlabel("eps (pixel levels)")
        ax.set_title(attack)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel or metric)
    if rows:
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _scaled_sem(row: SummaryRow, metric: str) -> float:
    if metric == "mean":
        return row.sem
    if row.mean == 0 or math.isnan(getattr(row, metric)):
        return 0.0
    return abs(getattr(row, metric) / row.mean) * row.sem
