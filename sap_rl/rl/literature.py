"""The robust-RL literature's published Atari scores, and sap-rl's own measurements beside them.

SA-DQN (Zhang et al., NeurIPS 2020) and RADIAL-RL (Oikarinen et al., NeurIPS 2021) report
attacks on Pong, Freeway, BankHeist and RoadRunner at eps = 1/255 and 3/255 of [0, 1] frames,
which is 1 and 3 grey levels of sap-rl's 0-255 frames. :data:`PUBLISHED` holds their figures;
:func:`literature_table` reads the ``summary.csv`` of ``sap-rl evaluate`` runs with
``configs/eval/literature-dense.yaml`` and ``configs/eval/literature-sap.yaml`` and prints one
Markdown table with both (``sap-rl report --literature DIR [DIR ...]``).

The harnesses differ, so the numbers sit side by side, not in one ranking: SA-DQN feeds one
frame, no frame stack, centre-cropped to 168x168 before resizing, and plays 50 episodes of up to
15,000 steps; RADIAL plays 20 episodes seeded 0-19 of up to 10,000 steps; sap-rl perturbs all 4
stacked 84x84 frames of the whole screen and plays games of up to 27,000 agent steps.

Example:
    >>> PUBLISHED["Pong"].sa_dqn_pgd10
    21.0
    >>> format_score(-20.58), format_score(23660.0, digits=0), format_score(None)
    ('-20.6', '23660', '-')
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sap_rl.errors import UserError
from sap_rl.grid.store import RUN_FILE
from sap_rl.io import read_json
from sap_rl.report import SummaryRow, evaluation_file, read_summary

__all__ = [
    "LITERATURE_EPS",
    "PUBLISHED",
    "PublishedScores",
    "format_score",
    "literature_table",
]


@dataclass(frozen=True)
class PublishedScores:
    """One game's published mean scores (``None``: not reported).

    Attributes:
        vanilla_clean: SA-DQN's undefended DQN, no attack.
        vanilla_pgd10: the same under PGD-10 at eps 1/255.
        vanilla_pgd50: the same under PGD-50 at eps 1/255.
        sa_dqn_clean: SA-DQN (convex relaxation), no attack.
        sa_dqn_pgd10: SA-DQN under PGD-10 at eps 1/255.
        radial_pgd_1: RADIAL-DQN under PGD at eps 1/255.
        radial_pgd_3: RADIAL-DQN under PGD at eps 3/255.
    """

    vanilla_clean: float
    vanilla_pgd10: float
    vanilla_pgd50: float
    sa_dqn_clean: float
    sa_dqn_pgd10: float
    radial_pgd_1: float
    radial_pgd_3: float


#: Published means: SA-DQN's README (github.com/chenhongge/SA_DQN: its table of vanilla DQN and
#: SA-DQN, eps 1/255) and RADIAL-RL's v1 README (github.com/tuomaso/radial_rl: RADIAL-DQN under
#: PGD at 1/255 and 3/255).
PUBLISHED: dict[str, PublishedScores] = {
    "Pong": PublishedScores(21.0, -21.0, -21.0, 21.0, 21.0, 20.8, 20.8),
    "Freeway": PublishedScores(34.0, 0.0, 0.0, 30.0, 30.0, 21.95, 21.55),
    "BankHeist": PublishedScores(1308.4, 56.4, 31.0, 1235.4, 1232.4, 1038.0, 833.5),
    "RoadRunner": PublishedScores(45534.0, 0.0, 0.0, 44638.0, 44732.0, 43920.0, 12480.0),
}

#: (column header, defense, attack) of sap-rl's own measurements, in table order.
_OURS = (
    ("dense PGD-10", "dense", "pgd-10"),
    ("dense PGD-50", "dense", "pgd-50"),
    ("SAP-100 PGD-10-EOT", "sap-100", "pgd-10-eot"),
    ("SAP-50 PGD-10-EOT", "sap-50", "pgd-10-eot"),
)
_THEIRS = ("vanilla DQN PGD-10 / PGD-50", "SA-DQN PGD-10", "RADIAL-DQN PGD")

#: The literature's budgets in grey levels (eps / 255 on [0, 1] frames); 0 is the clean row.
LITERATURE_EPS = (0.0, 1.0, 3.0, 5.0)


def format_score(value: float | None, digits: int = 1) -> str:
    """A mean score with ``digits`` decimals; ``-`` if missing."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def _as_published(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _game(folder: Path) -> str:
    path = evaluation_file(folder, RUN_FILE)
    run = read_json(path)
    fingerprint = run.get("fingerprint") if isinstance(run, dict) else None
    game = fingerprint.get("game") if isinstance(fingerprint, dict) else None
    if not isinstance(game, str):
        raise UserError(f"{path}: no fingerprint.game; is {folder} the --out folder of "
                        "sap-rl evaluate?")  # fmt: skip
    if game not in PUBLISHED:
        raise UserError(
            f"{folder}: game {game!r} has no published figures; "
            f"--literature knows {', '.join(PUBLISHED)}"
        )
    return game


def _published(scores: PublishedScores, eps: float) -> list[float | None]:
    """The published columns of one (game, eps) row (eps 0: the clean scores)."""
    if eps == 0:
        return [scores.vanilla_clean, scores.sa_dqn_clean, None]
    if eps == 1:
        return [scores.vanilla_pgd10, scores.sa_dqn_pgd10, scores.radial_pgd_1]
    if eps == 3:
        return [None, None, scores.radial_pgd_3]
    return [None, None, None]


def literature_table(folders: Sequence[str | os.PathLike[str]]) -> str:
    """sap-rl's scores beside SA-DQN's and RADIAL's, one row per game and eps, in Markdown.

    Each folder is an evaluation's ``--out`` folder (``summary.csv`` and ``run.json``); the
    folders of one game (its dense and its SAP run) are merged; "our games" gives the games per
    cell, dense's then SAP's where they differ (``50 / 10``). Rows are the budgets of
    :data:`LITERATURE_EPS` that the folders measured, eps 0 being each defense's clean score; a
    cell nobody measured or published is ``-``. Our RoadRunner means get no decimals, the other
    games' one; published figures are printed as published. The vanilla DQN column gives
    SA-DQN's PGD-10 and PGD-50 scores as ``a / b`` where they differ.

    Args:
        folders: evaluation folders of games in :data:`PUBLISHED`.

    Returns:
        The table, games in the order first seen.

    Raises:
        UserError: a folder without readable summary files, or of a game with no published
            figures.

    Example (on folders written by ``sap-rl evaluate``)::

        print(literature_table(["results/rl/pong-literature-dense",
                                "results/rl/pong-literature-sap"]))
    """
    rows: dict[str, list[SummaryRow]] = {}
    for folder in folders:
        game = _game(Path(folder))
        rows.setdefault(game, []).extend(read_summary(folder))
    header = ["game", "eps", "our games", *(name for name, _, _ in _OURS), *_THEIRS]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---|" + "---:|" * (len(header) - 3)]
    for game, game_rows in rows.items():
        published = PUBLISHED[game]
        means = {(r.defense, r.attack, r.eps): r.mean for r in game_rows}
        counts = {(r.defense, r.attack, r.eps): r.n for r in game_rows}
        clean = {r.defense: r.mean for r in game_rows if r.eps == 0}
        # Our means: none of RoadRunner's tens of thousands need decimals, the others get one.
        # Published figures are printed as the papers give them (21.95, 1308.4, 45534).
        digits = 0 if published.vanilla_clean >= 10_000 else 1
        for eps in [e for e in LITERATURE_EPS if e in {r.eps for r in game_rows}]:
            ours = [_ours(means, clean, d, a, eps) for _, d, a in _OURS]
            theirs = _published(published, eps)
            vanilla = _as_published(theirs[0])
            if eps == 1 and published.vanilla_pgd50 != published.vanilla_pgd10:
                vanilla += f" / {_as_published(published.vanilla_pgd50)}"
            cells = [
                *(format_score(v, digits) for v in ours),
                vanilla,
                *(_as_published(v) for v in theirs[1:]),
            ]
            label = "clean" if eps == 0 else f"{eps:g}"
            games = _games(counts, eps)
            lines.append(f"| {game} | {label} | {games} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _games(counts: dict[tuple[str, str, float], int], eps: float) -> str:
    """Games per cell at ``eps``: dense's, then the SAP cells' if they differ (``50 / 10``)."""
    dense = {n for (d, _, e), n in counts.items() if e == eps and d == "dense"}
    sap = {n for (d, _, e), n in counts.items() if e == eps and d.startswith("sap")}
    parts = [", ".join(map(str, sorted(group))) for group in (dense, sap) if group]
    return " / ".join(dict.fromkeys(parts)) or "-"


def _ours(
    means: dict[tuple[str, str, float], float],
    clean: dict[str, float],
    defense: str,
    attack: str,
    eps: float,
) -> float | None:
    """One measured cell; eps 0 is the defense's clean score, whatever attack it was filed under.

    Against the deterministic dense network an EOT attack is the plain attack (one draw is all
    draws), so a dense ``pgd-10-eot`` cell stands for ``pgd-10`` where that was not run.
    """
    if eps == 0:
        return clean.get(defense)
    found = means.get((defense, attack, eps))
    if found is None and defense == "dense":
        found = means.get((defense, f"{attack}-eot", eps))
    return found
