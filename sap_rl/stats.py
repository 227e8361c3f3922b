"""Statistics over matched games or examples: the worst case over attacks, paired bootstrap CIs.

Both evaluators measure every cell on the same games (RL: game ``g`` of every cell is reset with
seed ``seed + g``) or the same test images (vision), so the values of two cells are *matched*:
the ``i``-th value of one cell and the ``i``-th of another come from the same game or image. The
records of :mod:`sap_rl.report` (``(defense, attack, eps, value)``) keep that order within a cell,
which is all the functions here rely on.

- :func:`with_worst` adds the worst case over attacks, attack :data:`WORST`: per game or example
  the smallest value over every attack run at that (defense, eps), the per-example minimum that
  robust-RL and robust-vision papers report.
- :func:`paired_differences` gives each defense's mean difference to ``dense`` per (attack, eps)
  with a seeded percentile-bootstrap confidence interval over the matched pairs;
  :func:`differences_table` prints them.

Example:
    >>> recs = [("dense", "fgsm", 1.0, 3.0), ("dense", "fgsm", 1.0, 5.0),
    ...         ("dense", "pgd", 1.0, 4.0), ("dense", "pgd", 1.0, 1.0)]
    >>> [r for r in with_worst(recs, ["fgsm", "pgd"]) if r[1] == WORST]
    [('dense', 'worst', 1.0, 3.0), ('dense', 'worst', 1.0, 1.0)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "WORST",
    "PairedDifference",
    "bootstrap_mean_ci",
    "cell_values",
    "differences_table",
    "paired_differences",
    "with_worst",
]

#: The attack name of the worst-case rows (a public name: other tools read it).
WORST = "worst"
#: Bootstrap resamples per confidence interval.
BOOTSTRAP_RESAMPLES = 10_000

Record = tuple[str, str, float, float]
CellKey = tuple[str, str, float]


def cell_values(records: Iterable[Record]) -> dict[CellKey, list[float]]:
    """Each (defense, attack, eps) cell's values, in record order (the games' or images' order).

    Example:
        >>> cell_values([("dense", "fgsm", 0, 1.0), ("dense", "fgsm", 0, 2.0)])
        {('dense', 'fgsm', 0.0): [1.0, 2.0]}
    """
    cells: dict[CellKey, list[float]] = defaultdict(list)
    for defense, attack, eps, value in records:
        cells[(defense, attack, float(eps))].append(float(value))
    return dict(cells)


def with_worst(records: Sequence[Record], attacks: Sequence[str]) -> list[Record]:
    """``records`` followed by the worst case over ``attacks`` as attack :data:`WORST`.

    For each (defense, eps) whose cells of **every** attack in ``attacks`` are in ``records``
    (with as many values each), the worst record ``i`` is the smallest value ``i`` over those
    cells: the worst attack per game or example, not the worst attack on average. A (defense, eps)
    with a cell missing (a run stopped by a time limit) gets no worst row, since a minimum over
    fewer attacks would overstate robustness. With fewer than two distinct attacks nothing is
    added: the worst case is then the one attack's own row.

    Args:
        records: ``(defense, attack, eps, value)`` in game or example order within each cell.
        attacks: the attacks of the run (the names used in ``records``).

    Returns:
        A new list: ``records`` and then the worst records.

    Example:
        >>> recs = [("sap", "a", 0.0, 9.0), ("sap", "b", 0.0, 9.0), ("sap", "a", 2.0, 1.0)]
        >>> with_worst(recs, ["a", "b"])[3:]  # eps 2 lacks attack b: no worst row there
        [('sap', 'worst', 0.0, 9.0)]
    """
    names = list(dict.fromkeys(attacks))
    out = list(records)
    if len(names) < 2:
        return out
    cells = cell_values(records)
    groups = dict.fromkeys((defense, eps) for defense, _, eps in cells)
    for defense, eps in groups:
        columns = [cells.get((defense, attack, eps)) for attack in names]
        if any(c is None for c in columns) or len({len(c) for c in columns if c}) != 1:
            continue
        worst = np.min(np.array(columns, dtype=float), axis=0)
        out += [(defense, WORST, eps, float(v)) for v in worst]
    return out


@dataclass(frozen=True)
class PairedDifference:
    """A defense's mean difference to the baseline over matched games or examples, with its CI.

    Attributes:
        defense: the defense compared.
        attack: the attack (``worst`` included).
        eps: the budget.
        diff: mean of (defense value - baseline value) over the matched pairs.
        ci_low: lower end of the percentile-bootstrap 95% interval.
        ci_high: upper end.
        n: matched pairs.
        resamples: bootstrap resamples.
        seed: seed of the bootstrap's generator.
    """

    defense: str
    attack: str
    eps: float
    diff: float
    ci_low: float
    ci_high: float
    n: int
    resamples: int
    seed: int


def bootstrap_mean_ci(
    values: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    A resample draws ``len(values)`` values with replacement; drawn that way, the counts of the
    distinct values are multinomial, so they are drawn as such (``numpy.random.Generator``
    seeded by ``seed``): the same distribution as drawing indices, at a cost of ``resamples``
    times the number of *distinct* values (three for the differences of 0/1 correctness) instead
    of ``resamples`` times ``n``.

    Args:
        values: the sample (for a paired comparison, the differences).
        resamples: bootstrap resamples (>= 1).
        seed: seeds the generator: the same call gives the same interval.
        level: coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: no values, ``resamples`` < 1 or ``level`` outside (0, 1).

    Example:
        >>> bootstrap_mean_ci([2.0, 2.0, 2.0], resamples=100)
        (2.0, 2.0)
        >>> low, high = bootstrap_mean_ci([0.0, 1.0, 3.0, 4.0], seed=1)
        >>> 0.0 <= low < 2.0 < high <= 4.0
        True
    """
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    distinct, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
    if len(distinct) == 1:  # every resample is the sample: exactly that value, no rounding
        return float(distinct[0]), float(distinct[0])
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=resamples)
    means = draws @ distinct / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_differences(
    records: Sequence[Record],
    *,
    baseline: str = "dense",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[PairedDifference]:
    """Each defense's mean difference to ``baseline`` per (attack, eps), with a bootstrap 95% CI.

    The pairs are the cells' values in order (matched games or examples, module docs); a cell of
    another length than the baseline's is skipped. Every interval uses a generator seeded by
    ``seed`` afresh, so a row's interval does not depend on which other rows were computed.

    Args:
        records: ``(defense, attack, eps, value)`` in game or example order within each cell.
        baseline: the defense compared against.
        resamples: bootstrap resamples per interval.
        seed: the bootstrap's seed.

    Returns:
        One :class:`PairedDifference` per (defense other than ``baseline``, attack, eps) that the
        baseline also has, in the order the records first name them.

    Example:
        >>> recs = [("dense", "fgsm", 1.0, 1.0), ("dense", "fgsm", 1.0, 3.0),
        ...         ("sap", "fgsm", 1.0, 2.5), ("sap", "fgsm", 1.0, 4.5)]
        >>> d = paired_differences(recs, resamples=100)[0]
        >>> (d.defense, d.diff, d.ci_low, d.ci_high, d.n)
        ('sap', 1.5, 1.5, 1.5, 2)
    """
    cells = cell_values(records)
    out = []
    for (defense, attack, eps), values in cells.items():
        reference = cells.get((baseline, attack, eps))
        if defense == baseline or reference is None or len(reference) != len(values):
            continue
        diffs = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
        low, high = bootstrap_mean_ci(diffs.tolist(), resamples=resamples, seed=seed)
        out.append(PairedDifference(defense, attack, eps, float(diffs.mean()), low, high,
                                    len(diffs), resamples, seed))  # fmt: skip
    return out


def differences_table(differences: Sequence[PairedDifference], *, digits: int = 1) -> str:
    """The paired differences as a Markdown table (``sap-rl report --differences DIR``).

    Args:
        differences: as :func:`paired_differences` returns them.
        digits: decimals of the differences (1 for game scores, 3 for accuracies).

    Example:
        >>> d = PairedDifference("sap-100", "fgsm", 1.0, 250.0, 100.0, 400.0, 10, 10000, 0)
        >>> print(differences_table([d], digits=0))
        | defense | attack | eps | minus dense | 95% CI | n |
        |---|---|---:|---:|---|---:|
        | SAP-100 | FGSM | 1 | 250 | [100, 400] | 10 |
    """
    lines = [
        "| defense | attack | eps | minus dense | 95% CI | n |",
        "|---|---|---:|---:|---|---:|",
    ]
    for d in differences:
        name = d.defense.upper() if d.defense.startswith("sap") else d.defense
        lines.append(
            f"| {name} | {d.attack.upper()} | {d.eps:g} | {d.diff:.{digits}f} | "
            f"[{d.ci_low:.{digits}f}, {d.ci_high:.{digits}f}] | {d.n} |"
        )
    return "\n".join(lines)
