"""Gradient-masking checks on an evaluation's summary: flags that say a result is too good.

A defense that only hides its gradients (Athalye et al. 2018) looks robust to the white-box
attacks it was tuned against and fails the simple checks of Carlini et al. 2019 ("On Evaluating
Adversarial Robustness", section 5: "a large enough perturbation must succeed"; "transfer and
gradient-free attacks must not beat white-box attacks"). Both checks read only the summary rows
(:class:`sap_rl.report.SummaryRow`) and, where given, the matched per-game or per-example records,
so they know no domain: a score is a game's reward (RL) or an image's 0/1 correctness (vision),
and the *floor* is what no input at all achieves (the random policy's score, or chance accuracy).

- :func:`large_budget_checks` (kind ``large-budget``): at ``eps >= large_eps`` every attack row
  whose score is, by more than noise, above the floor. The row is flagged when its lower
  ``z``-standard-error bound is above the floor plus ``tolerance`` of the clean range:
  ``mean - z * sem > floor + tolerance * (dense clean - floor)``, i.e. in the summary's
  ``normalized`` units ``normalized - z * sem / scale > tolerance``. Timed attacks (which leave
  steps clean by design) and the ``worst`` row (the per-input minimum over the same attack rows,
  so never above any of them) are not checked.
- :func:`white_box_checks` (kind ``beats-white-box``): per (defense, eps > 0), each transfer
  (``transfer-*``) or gradient-free (``square*``) row whose mean is below the best (lowest-mean)
  white-box row's by more than noise: with matched records, when the percentile-bootstrap 95%
  interval of the mean paired difference (candidate - white-box, per game or image) lies wholly
  below 0 (:func:`sap_rl.stats.bootstrap_mean_ci`); without them, when the gap exceeds
  ``z * sqrt(sem_c**2 + sem_w**2)``.

Example:
    >>> from sap_rl.report import summarize
    >>> recs = [("dense", "pgd-10", 0.0, 1.0), ("dense", "pgd-10", 0.0, 1.0),
    ...         ("dense", "pgd-10", 64.0, 1.0), ("dense", "pgd-10", 64.0, 1.0)]
    >>> rows = summarize(recs, random_score=0.1)
    >>> [c.kind for c in sanity_checks(rows, recs, floor=0.1, floor_name="chance")]
    ['large-budget']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sap_rl.attacks.names import TIMED_PREFIX, TRANSFER_PREFIX
from sap_rl.errors import UserError
from sap_rl.stats import BOOTSTRAP_RESAMPLES, WORST, bootstrap_mean_ci, cell_values

__all__ = [
    "BEATS_WHITE_BOX",
    "DEFAULT_LARGE_EPS",
    "LARGE_BUDGET",
    "TOLERANCE",
    "Check",
    "Row",
    "Z",
    "attack_family",
    "check_large_eps",
    "checks_markdown",
    "large_budget_checks",
    "sanity_checks",
    "warning_lines",
    "white_box_checks",
]

#: Kind of a flag: an attack that does not reach the floor at a large budget.
LARGE_BUDGET = "large-budget"
#: Kind of a flag: a transfer or gradient-free attack stronger than every white-box one.
BEATS_WHITE_BOX = "beats-white-box"
#: Budgets (grey levels of 0-255 inputs) from which every attack must reach the floor: a quarter
#: of the range is a perturbation that can draw any digit or paint over a frame.
DEFAULT_LARGE_EPS = 64.0
#: Standard errors a difference must exceed (one-sided, about 2.3% each).
Z = 2.0
#: Share of the clean range (dense clean score - floor) a large-budget row may stay above the
#: floor: room for the floor's own estimate (10 random games) and for inputs no attack can move.
TOLERANCE = 0.05

Family = Literal["white-box", "transfer", "gradient-free", "worst"]
Record = tuple[str, str, float, float]


class Row(Protocol):
    """What the checks read of a summary row (:class:`sap_rl.report.SummaryRow` has it all).

    A protocol, not the report layer's class: the core imports nothing above it.
    """

    @property
    def defense(self) -> str: ...
    @property
    def attack(self) -> str: ...
    @property
    def eps(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def sem(self) -> float: ...
    @property
    def normalized(self) -> float: ...


@dataclass(frozen=True)
class Check:
    """One flag raised on a summary row (``summary.json``'s ``checks``).

    Attributes:
        kind: :data:`LARGE_BUDGET` or :data:`BEATS_WHITE_BOX`.
        defense: the row's defense.
        attack: the row's attack.
        eps: the row's budget.
        value: the row's mean score.
        reference: the floor (large-budget) or the best white-box mean (beats-white-box).
        reference_name: what ``reference`` is (``chance``, ``the random policy``, or the
            white-box attack's name).
        message: one line for a person.
    """

    kind: str
    defense: str
    attack: str
    eps: float
    value: float
    reference: float
    reference_name: str
    message: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        """The check of one ``summary.json`` ``checks`` entry.

        Example:
            >>> Check.from_dict({"kind": "large-budget", "defense": "dense", "attack": "fgsm",
            ...     "eps": 64, "value": 0.5, "reference": 0.1, "reference_name": "chance",
            ...     "message": "m"}).eps
            64.0
        """
        return cls(
            kind=str(data["kind"]),
            defense=str(data["defense"]),
            attack=str(data["attack"]),
            eps=float(data["eps"]),
            value=float(data["value"]),
            reference=float(data["reference"]),
            reference_name=str(data["reference_name"]),
            message=str(data["message"]),
        )


def attack_family(name: str) -> Family:
    """Which family a (canonical, lower-case) attack name belongs to.

    ``transfer-*`` (also behind ``timed-``) is a transfer attack, ``square*`` gradient-free,
    :data:`sap_rl.stats.WORST` the worst-case row, anything else white-box.

    Example:
        >>> names = ("pgd-10-eot", "timed-transfer-fgsm", "square-1000", "worst")
        >>> [attack_family(a) for a in names]
        ['white-box', 'transfer', 'gradient-free', 'worst']
    """
    if name == WORST:
        return "worst"
    base = name.removeprefix(TIMED_PREFIX)
    if base.startswith(TRANSFER_PREFIX):
        return "transfer"
    if base.startswith("square"):
        return "gradient-free"
    return "white-box"


def check_large_eps(value: float, name: str = "large_eps") -> float:
    """``value`` as a float if it is a valid large-budget threshold (> 0; ``inf`` turns it off).

    Raises:
        UserError: not a number, NaN, or not above 0.

    Example:
        >>> check_large_eps(64)
        64.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number of grey levels > 0, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise UserError(f"{name} must be a number of grey levels > 0, got {value!r}")
    return float(value)


def _normalized_scale(rows: Sequence[Row], floor: float) -> float:
    """``dense clean - floor``, read off the rows' ``normalized`` (NaN if no row has one).

    ``normalized = (mean - floor) / scale`` for every row when the summary's random score is
    ``floor``; the row furthest from the floor gives the least rounding.
    """
    usable = [r for r in rows if math.isfinite(r.normalized) and r.normalized != 0.0]
    if not usable:
        return math.nan
    row = max(usable, key=lambda r: abs(r.normalized))
    return (row.mean - floor) / row.normalized


def large_budget_checks(
    rows: Sequence[Row],
    *,
    floor: float,
    large_eps: float = DEFAULT_LARGE_EPS,
    floor_name: str = "the floor",
    tolerance: float = TOLERANCE,
    z: float = Z,
) -> list[Check]:
    """Flag each attack row at ``eps >= large_eps`` whose score stays above ``floor`` (module docs).

    Args:
        rows: the summary rows (``normalized`` computed with ``random_score=floor``).
        floor: the random policy's score (RL) or chance accuracy (vision).
        large_eps: the threshold budget.
        floor_name: what the floor is, for the messages.
        tolerance: share of the clean range (``dense clean - floor``) allowed above the floor;
            0 when the summary has no clean reference (``normalized`` all NaN).
        z: standard errors of the row's mean subtracted before comparing.

    Returns:
        One :data:`LARGE_BUDGET` check per flagged row, in row order.

    Example:
        >>> from sap_rl.report import SummaryRow
        >>> rows = [SummaryRow("dense", "fgsm", 0.0, 100, 0.95, 0.2, 0.02, 1.0, 1.0),
        ...         SummaryRow("dense", "fgsm", 64.0, 100, 0.40, 0.5, 0.05, 0.42, 0.35),
        ...         SummaryRow("dense", "pgd-10", 64.0, 100, 0.12, 0.3, 0.03, 0.13, 0.02)]
        >>> [(c.attack, c.eps) for c in large_budget_checks(rows, floor=0.1)]
        [('fgsm', 64.0)]
    """
    scale = _normalized_scale(rows, floor)
    margin = tolerance * scale if math.isfinite(scale) and scale > 0 else 0.0
    out = []
    for r in rows:
        if r.eps < large_eps or r.eps <= 0 or attack_family(r.attack) == "worst":
            continue
        if r.attack.startswith(TIMED_PREFIX):  # leaves steps clean by design
            continue
        if r.mean - z * r.sem > floor + margin:
            message = (
                f"{r.defense} {r.attack} eps {r.eps:g}: mean {r.mean:.4g} (SE {r.sem:.2g}) is "
                f"above {floor_name} ({floor:.4g}) by more than {z:g} SE + {margin:.3g} "
                f"({tolerance:.0%} of the clean range); at eps >= {large_eps:g} every attack "
                "should reach it: a weak attack or gradient masking"
            )
            out.append(Check(LARGE_BUDGET, r.defense, r.attack, r.eps, r.mean, floor,
                             floor_name, message))  # fmt: skip
    return out


def white_box_checks(
    rows: Sequence[Row],
    records: Iterable[Record] | None = None,
    *,
    z: float = Z,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[Check]:
    """Flag each transfer or gradient-free row stronger than the best white-box row (module docs).

    Args:
        rows: the summary rows.
        records: ``(defense, attack, eps, value)`` in game or example order within each cell
            (matched across cells); ``None``: compare means and standard errors only.
        z: standard errors of the gap, when no matched records are available.
        resamples: bootstrap resamples of the paired interval.
        seed: the bootstrap's seed (each interval starts afresh from it).

    Returns:
        One :data:`BEATS_WHITE_BOX` check per flagged row, in row order.

    Example:
        >>> from sap_rl.report import SummaryRow
        >>> rows = [SummaryRow("sap", "pgd-10", 8.0, 100, 0.60, 0.5, 0.01, 0.6, 0.6),
        ...         SummaryRow("sap", "transfer-pgd-10", 8.0, 100, 0.30, 0.5, 0.01, 0.3, 0.3)]
        >>> [c.reference_name for c in white_box_checks(rows)]
        ['pgd-10']
    """
    cells = cell_values(records) if records is not None else {}
    best: dict[tuple[str, float], Row] = {}
    for r in rows:
        if r.eps > 0 and attack_family(r.attack) == "white-box":
            key = (r.defense, r.eps)
            if key not in best or r.mean < best[key].mean:
                best[key] = r
    out = []
    for r in rows:
        ref = best.get((r.defense, r.eps))
        if ref is None or attack_family(r.attack) not in ("transfer", "gradient-free"):
            continue
        if r.mean >= ref.mean:
            continue
        mine = cells.get((r.defense, r.attack, r.eps))
        theirs = cells.get((ref.defense, ref.attack, ref.eps))
        if mine and theirs and len(mine) == len(theirs):
            diffs = [a - b for a, b in zip(mine, theirs, strict=True)]
            low, high = bootstrap_mean_ci(diffs, resamples=resamples, seed=seed)
            flagged = high < 0.0
            mean = sum(diffs) / len(diffs)
            noise = f"paired difference {mean:.4g}, 95% CI [{low:.4g}, {high:.4g}]"
        else:
            gap = math.hypot(r.sem, ref.sem)
            flagged = ref.mean - r.mean > z * gap
            noise = f"gap {ref.mean - r.mean:.4g} > {z:g} x {gap:.2g} (combined SE)"
        if flagged:
            message = (
                f"{r.defense} {r.attack} eps {r.eps:g}: mean {r.mean:.4g} is below the best "
                f"white-box attack's ({ref.attack}, {ref.mean:.4g}; {noise}): the white-box "
                "numbers are too optimistic"
            )
            out.append(Check(BEATS_WHITE_BOX, r.defense, r.attack, r.eps, r.mean, ref.mean,
                             ref.attack, message))  # fmt: skip
    return out


def sanity_checks(
    rows: Sequence[Row],
    records: Iterable[Record] | None = None,
    *,
    floor: float,
    large_eps: float = DEFAULT_LARGE_EPS,
    floor_name: str = "the floor",
    seed: int = 0,
) -> list[Check]:
    """Both checks: :func:`large_budget_checks`, then :func:`white_box_checks`.

    Example:
        >>> sanity_checks([], floor=0.1)
        []
    """
    recs = list(records) if records is not None else None
    return [
        *large_budget_checks(rows, floor=floor, large_eps=large_eps, floor_name=floor_name),
        *white_box_checks(rows, recs, seed=seed),
    ]


def _as_check(check: Check | Mapping[str, Any]) -> Check:
    return check if isinstance(check, Check) else Check.from_dict(check)


def warning_lines(checks: Iterable[Check | Mapping[str, Any]]) -> list[str]:
    """One ``sap-rl: warning:`` line per check, as the evaluate commands print them on stderr.

    Example:
        >>> warning_lines([{"kind": "large-budget", "defense": "d", "attack": "a", "eps": 64,
        ...     "value": 1, "reference": 0, "reference_name": "chance", "message": "too high"}])
        ['sap-rl: warning: large-budget: too high']
    """
    return [f"sap-rl: warning: {c.kind}: {c.message}" for c in map(_as_check, checks)]


def checks_markdown(checks: Iterable[Check | Mapping[str, Any]]) -> str:
    """The checks as a Markdown list under a heading line ("" when there are none).

    Example:
        >>> print(checks_markdown([{"kind": "beats-white-box", "defense": "d", "attack": "a",
        ...     "eps": 8, "value": 0.2, "reference": 0.4, "reference_name": "pgd-10",
        ...     "message": "too low"}]))
        Gradient-masking checks: 1 flag
        <BLANKLINE>
        - beats-white-box: too low
    """
    items = [_as_check(c) for c in checks]
    if not items:
        return ""
    head = f"Gradient-masking checks: {len(items)} flag{'s' if len(items) > 1 else ''}"
    return "\n".join([head, "", *(f"- {c.kind}: {c.message}" for c in items)])
