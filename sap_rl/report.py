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
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sap_rl.errors import UserError
from sap_rl.io import atomic_path, atomic_write_json, atomic_write_text
from sap_rl.sanity import Check, checks_markdown
from sap_rl.stats import PairedDifference

__all__ = [
    "REWARD_PANELS",
    "SummaryRow",
    "evaluation_file",
    "folder_markdown",
    "markdown_table",
    "plot_accuracy",
    "plot_metric",
    "plot_metrics",
    "plot_relative_reward",
    "read_checks",
    "read_differences",
    "read_summary",
    "read_summary_csv",
    "relative_reward_defined",
    "replot",
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


def evaluation_file(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder/name``; :class:`UserError` if ``folder`` has no such file (not an evaluation's)."""
    path = Path(folder) / name
    if not path.is_file():
        raise UserError(f"{folder}: no {name}; is it the --out folder of an evaluation?")
    return path


def read_summary(folder: str | os.PathLike[str]) -> list[SummaryRow]:
    """The rows of ``folder/summary.csv``; :class:`UserError` if it is missing or unreadable."""
    path = evaluation_file(folder, "summary.csv")
    try:
        return read_summary_csv(path)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable summary ({err})") from None


def read_differences(folder: str | os.PathLike[str]) -> tuple[list[PairedDifference], bool]:
    """The paired differences to dense in ``folder/summary.json``, and whether it is vision's.

    Raises:
        UserError: no readable ``summary.json``, or one written before the differences were
            (rerunning the evaluation command writes them: its finished cells are reused).
    """
    path = evaluation_file(folder, "summary.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable summary ({err})") from None
    entries = meta.get("paired_differences") if isinstance(meta, dict) else None
    if entries is None:
        raise UserError(
            f"{path}: no paired_differences; rerun the evaluation command on this folder "
            "(its finished cells are reused, nothing is played again)"
        )
    try:
        diffs = [PairedDifference(**entry) for entry in entries]
    except TypeError as err:
        raise UserError(f"{path}: unreadable paired_differences ({err})") from None
    return diffs, "chance_accuracy" in meta


def _summary_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder/summary.json`` as a dict (``{}`` if there is none)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable summary ({err})") from None
    return meta if isinstance(meta, dict) else {}


def read_checks(folder: str | os.PathLike[str]) -> list[Check]:
    """The gradient-masking flags in ``folder/summary.json`` (:mod:`sap_rl.sanity`).

    A summary written before the checks existed has none: ``[]``.

    Raises:
        UserError: an unreadable ``summary.json`` or ``checks`` entry.
    """
    try:
        return [Check.from_dict(c) for c in _summary_meta(folder).get("checks") or []]
    except (TypeError, KeyError, ValueError) as err:
        raise UserError(f"{Path(folder) / 'summary.json'}: unreadable checks ({err})") from None


def folder_markdown(folder: str | os.PathLike[str]) -> str:
    """:func:`markdown_table` of an evaluation folder (``sap-rl report --markdown DIR``).

    Game scores get no decimals where some mean reaches 1,000 and one otherwise (Pong's -20.6
    and 20.4 differ, 21 and 20 would not say how), accuracies (a ``sap-rl vision evaluate``
    folder, whose ``summary.json`` has ``chance_accuracy``) three. The folder's
    gradient-masking flags, if it has any, follow the table
    (:func:`sap_rl.sanity.checks_markdown`).
    """
    rows = read_summary(folder)
    if "chance_accuracy" in _summary_meta(folder):
        digits = 3
    else:
        digits = 0 if max((abs(r.mean) for r in rows), default=0.0) >= 1000 else 1
    table = markdown_table(rows, digits=digits)
    flags = checks_markdown(read_checks(folder))
    return f"{table}\n\n{flags}" if flags else table


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


#: Panels of the RL plot: each defense's reward relative to its own clean reward (the SAP paper's
#: measure), and the same rewards on one scale for all defenses, so that a defense that starts
#: from a lower clean score is seen to start lower.
REWARD_PANELS = (
    ("relative", "reward / same defense's clean reward"),
    ("normalized", "(reward - random) / (dense clean - random)"),
)


def plot_metric(
    rows: Sequence[SummaryRow],
    path: str | os.PathLike[str],
    *,
    metric: str = "relative",
    ylabel: str | None = None,
    title: str | None = None,
    sem_over: str = "games",
) -> None:
    """Plot ``metric`` against eps, one panel per attack, one line per defense with SEM error bars.

    ``metric`` is ``"relative"``, ``"normalized"`` or ``"mean"``; see :func:`plot_metrics`.
    """
    plot_metrics(rows, path, [(metric, ylabel or metric)], title=title, sem_over=sem_over)


def plot_metrics(
    rows: Sequence[SummaryRow],
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
    sem_over: str = "games",
) -> None:
    """Plot metrics against eps: one row of panels per ``(metric, y label)``, one column per attack.

    Each defense is a line with error bars of one standard error of the mean (SEM) over
    ``sem_over``, scaled the way the metric scales the mean. The x axis is symmetric-log, so that
    eps = 0 sits beside 0.5 .. 32, with a tick at each measured eps. A ``relative`` panel has a
    dotted line at 1 (each defense's clean score), a ``normalized`` one at 1 (dense's clean score)
    and 0 (the random policy).

    Raises:
        ValueError: a metric other than ``"relative"``, ``"normalized"`` or ``"mean"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    for metric, _ in panels:
        if metric not in ("relative", "normalized", "mean"):
            raise ValueError(f"metric must be 'relative', 'normalized' or 'mean', got {metric!r}")
    attacks = list(dict.fromkeys(r.attack for r in rows)) or [""]
    defenses = list(dict.fromkeys(r.defense for r in rows))
    eps_ticks = sorted({r.eps for r in rows})
    normalized_slope = _normalized_slope(rows)
    fig, axes = plt.subplots(
        len(panels),
        len(attacks),
        figsize=(4.2 * len(attacks), 3.3 * len(panels) + 0.5),
        squeeze=False,
        sharex=True,
    )
    for i, (metric, ylabel) in enumerate(panels):
        for ax, attack in zip(axes[i], attacks, strict=True):
            for defense in defenses:
                cell = sorted((r for r in rows if r.attack == attack and r.defense == defense),
                              key=lambda r: r.eps)  # fmt: skip
                if not cell:
                    continue
                ys = [getattr(r, metric) for r in cell]
                errs = [_scaled_sem(r, metric, rows, normalized_slope) for r in cell]
                ax.errorbar([r.eps for r in cell], ys, yerr=errs, marker="o", ms=3, capsize=2,
                            label=defense)  # fmt: skip
            references = {"relative": (1.0,), "normalized": (0.0, 1.0)}.get(metric, ())
            for y in references:
                ax.axhline(y, color="grey", lw=0.8, ls=":")
            ax.set_xscale("symlog", linthresh=0.5)
            # symlog's own locator crowds 0 and 10^-1 together; tick exactly the measured budgets.
            ax.xaxis.set_major_locator(FixedLocator(eps_ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{e:g}" for e in eps_ticks])
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(attack)
            if i == len(panels) - 1:
                ax.set_xlabel("eps (pixel levels)")
        axes[i][0].set_ylabel(ylabel, fontsize=9)
    if rows:
        axes[0][0].legend(fontsize=8)
    caption = f"error bars: \u00b11 SEM over {sem_over}"
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_relative_reward(
    rows: Sequence[SummaryRow], path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """The RL evaluator's ``relative_reward.png``: the :data:`REWARD_PANELS` against eps.

    A share of the clean reward means nothing once scores can be negative (Pong's run from -21
    to 21: a defense at -17 clean and -21 attacked would "keep 124%"), so where any mean is
    below 0 or a clean mean is not above 0 only the ``normalized`` row is drawn, and the
    caption says why.

    Example:
        >>> import tempfile, pathlib
        >>> rows = [SummaryRow("dense", "fgsm", 0.0, 10, -17.0, 3.0, 1.0, 1.0, 0.1),
        ...         SummaryRow("dense", "fgsm", 1.0, 10, -21.0, 0.0, 0.0, 1.2, 0.0)]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_relative_reward(rows, pathlib.Path(tmp) / "plot.png")
    """
    if relative_reward_defined(rows):
        plot_metrics(rows, path, REWARD_PANELS, title=title, sem_over="games")
        return
    note = "reward / clean reward not drawn: scores below 0"
    panels = [panel for panel in REWARD_PANELS if panel[0] != "relative"]
    plot_metrics(rows, path, panels, title=f"{title}\n{note}" if title else note, sem_over="games")


def relative_reward_defined(rows: Sequence[SummaryRow]) -> bool:
    """Whether every reward is >= 0 and every clean reward > 0, so that reward / clean is a share.

    Example:
        >>> clean = SummaryRow("dense", "fgsm", 0.0, 10, 20.8, 0.4, 0.1, 1.0, 1.0)
        >>> relative_reward_defined([clean])
        True
    """
    return all(r.mean >= 0 for r in rows) and all(r.mean > 0 for r in rows if r.eps == 0)


def plot_accuracy(
    rows: Sequence[SummaryRow], path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """The vision evaluator's ``accuracy.png``: accuracy against eps."""
    plot_metrics(rows, path, [("mean", "accuracy")], title=title, sem_over="test images")


def replot(folder: str | os.PathLike[str]) -> Path:
    """Redraw the plot of a finished evaluation from its ``summary.csv`` and ``summary.json``.

    Nothing is played or attacked: an RL folder (``sap-rl evaluate``) gets a new
    ``relative_reward.png``, a vision folder (``sap-rl vision evaluate``) a new ``accuracy.png``
    (``reliability.png`` needs the per-example cells and is left alone).

    Returns:
        The path of the plot written.

    Raises:
        UserError: the folder lacks either summary file, or they are not an evaluation's.
    """
    out = Path(folder)
    summary_csv = evaluation_file(out, "summary.csv")
    summary_json = evaluation_file(out, "summary.json")
    try:
        meta = json.loads(summary_json.read_text(encoding="utf-8"))
        rows = read_summary_csv(summary_csv)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{out}: unreadable summary: {err}") from None
    if isinstance(meta, dict) and "game" in meta and "agent" in meta:
        plot = out / "relative_reward.png"
        plot_relative_reward(rows, plot, title=f"{meta['agent']['name']} ({meta['game']})")
    elif isinstance(meta, dict) and "chance_accuracy" in meta and "model" in meta:
        model = meta["model"]
        title = f"{model['name']} ({model['dataset']}, {meta['examples']} test images)"
        plot = out / "accuracy.png"
        plot_accuracy(rows, plot, title=title)
    else:
        raise UserError(f"{summary_json}: neither an Atari nor a vision evaluation summary")
    return plot


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _scaled_sem(
    row: SummaryRow, metric: str, rows: Sequence[SummaryRow], normalized_slope: float
) -> float:
    """The row's SEM on the scale of ``metric`` (both metrics are linear in the mean)."""
    if metric == "mean":
        return row.sem
    if metric == "normalized":
        return abs(normalized_slope) * row.sem if math.isfinite(normalized_slope) else 0.0
    # relative = mean / the same defense's clean mean: the SEM scales by 1 / that clean mean.
    clean = [r.mean for r in rows if r.defense == row.defense and r.eps == 0.0]
    own = [
        r.mean for r in rows if r.defense == row.defense and r.attack == row.attack and r.eps == 0
    ]
    reference = own[0] if own else (clean[0] if clean else math.nan)
    if not math.isfinite(reference) or reference == 0 or math.isnan(row.relative):
        return 0.0
    return abs(row.sem / reference)


def _normalized_slope(rows: Sequence[SummaryRow]) -> float:
    """d normalized / d mean = 1 / (dense clean - random), the same for every row of a table.

    It is read off the two rows with the most different means, so no random score is needed.
    """
    usable = [r for r in rows if math.isfinite(r.normalized)]
    if len(usable) < 2:
        return math.nan
    low = min(usable, key=lambda r: r.mean)
    high = max(usable, key=lambda r: r.mean)
    if high.mean == low.mean:
        return math.nan
    return (high.normalized - low.normalized) / (high.mean - low.mean)


def markdown_table(rows: Sequence[SummaryRow], *, digits: int = 0) -> str:
    """A results table in Markdown: one row per (defense, attack), the mean at each eps.

    The README's tables are this function's output for the committed ``summary.csv`` files
    (``sap-rl report --markdown DIR``), and a test keeps them in step. Against the deterministic
    ``dense`` defense an EOT attack is the plain attack, so its row is labelled
    ``PGD-10 (= PGD-10-EOT)``, and an identical plain row beside it is left out.

    Args:
        rows: summary rows, as :func:`read_summary_csv` returns them.
        digits: decimals of the means (0 for game scores, 3 for accuracies).

    Example:
        >>> records = [("dense", "fgsm", 0.0, 20.0), ("dense", "fgsm", 1.0, 9.5)]
        >>> rows = summarize(records, random_score=0.0)
        >>> print(markdown_table(rows))
        | defense | attack | clean | 1 |
        |---|---|---:|---:|
        | dense | FGSM | 20 | 10 |
    """
    eps_values = sorted({r.eps for r in rows if r.eps > 0})
    means: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        means.setdefault((r.defense, r.attack), {})[r.eps] = r.mean
    lines = [
        "| defense | attack | clean | " + " | ".join(f"{e:g}" for e in eps_values) + " |",
        "|---|---|---:|" + "---:|" * len(eps_values),
    ]
    for (defense, attack), by_eps in means.items():
        label = attack.upper()
        if defense == "dense" and attack.endswith("-eot"):
            plain = attack.removesuffix("-eot")
            if means.get((defense, plain)) == by_eps:
                continue  # printed with the plain attack's row
            if (defense, plain) not in means:  # else both rows stand, as measured (vision)
                label = f"{plain.upper()} (= {label})"
        elif defense == "dense" and means.get((defense, f"{attack}-eot")) == by_eps:
            label = f"{label} (= {label}-EOT)"
        if attack == "worst":
            label = "worst case (over attacks)"
        name = defense.upper() if defense.startswith("sap") else defense
        cells = [by_eps.get(e, math.nan) for e in [0.0, *eps_values]]
        text = ["" if math.isnan(v) else f"{v:.{digits}f}" for v in cells]
        lines.append(f"| {name} | {label} | " + " | ".join(text) + " |")
    return "\n".join(lines)
