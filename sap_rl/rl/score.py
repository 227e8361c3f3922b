"""Re-score an agent folder on more whole games (``sap-rl score``).

Training ends with ``eval.final_episodes`` games; a shipped agent's card needs more (the zoo uses
30). :func:`score_agent` plays ``episodes`` whole games, greedy and unclipped, with the card's own
preprocessing and evaluation seed, and plays a seeded uniform random policy on the same games,
with the trainer's own scoring (:mod:`sap_rl.rl.scoring`): the card's first games are the ones it
was scored on, and a card re-scored on as many games as it has gets its own numbers. It
returns the card as it is and as it would be with the new scores; only with ``write=True`` does it
replace ``card.json`` (atomically; the weights and their checksum are untouched), and it refuses to
replace a score over more games than it played unless ``force=True``: a shipped card's 30-game
score must not turn into a 2-game score by accident.

Example:
    >>> result = score_agent("agents/krull-ddqn", episodes=30)  # doctest: +SKIP
    >>> result.after.clean_score.episodes, result.written  # doctest: +SKIP
    (30, False)
    >>> for line in card_changes(result.before, result.after):  # doctest: +SKIP
    ...     print(line)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json
from sap_rl.rl.agent import CARD_FILE, AgentCard, load_agent
from sap_rl.rl.envs import AtariPreprocessing
from sap_rl.rl.games import resolve_game
from sap_rl.rl.play import game_progress
from sap_rl.rl.scoring import SCORING, agent_games, random_score, score_of
from sap_rl.rl.train_config import TrainConfig, TrainEvalConfig

__all__ = ["ScoreResult", "card_changes", "score_agent", "scoring_config"]

logger = logging.getLogger(__name__)


def scoring_config(card: AgentCard, *, episodes: int, n_envs: int) -> TrainConfig:
    """The :class:`TrainConfig` that replays ``card``'s evaluation protocol on ``episodes`` games.

    Preprocessing comes from the card's ``wrappers`` block, the game seeds from its
    ``evaluation.seed`` (games ``seed .. seed + episodes - 1``, the card's first games included).
    """
    fields = {f.name for f in dataclasses.fields(AtariPreprocessing)}
    env = {k: v for k, v in card.wrappers.items() if k in fields}
    seed = int(card.seed or 0)
    eval_seed = int(card.evaluation.get("seed", seed + TrainEvalConfig.seed_offset))
    if eval_seed < seed:
        raise UserError(f"card of {card.name!r}: evaluation seed {eval_seed} < seed {seed}")
    epsilon = float(card.evaluation.get("epsilon", 0.0))
    data: dict[str, Any] = {
        "seed": seed,
        "device": "cpu",
        "env": env,
        "eval": {
            "episodes": episodes,
            "final_episodes": episodes,
            "n_envs": min(n_envs, episodes),
            "epsilon": epsilon,
            "seed_offset": eval_seed - seed,
        },
    }
    return from_dict(TrainConfig, data)


@dataclass(frozen=True)
class ScoreResult:
    """What :func:`score_agent` measured: the card before and with the new scores.

    Attributes:
        before: the card as read from ``card_path``.
        after: the card with the measured scores (what ``card.json`` holds now if ``written``).
        card_path: the agent's ``card.json``.
        written: whether ``card.json`` was replaced.
    """

    before: AgentCard
    after: AgentCard
    card_path: Path
    written: bool


def _number(value: float | None, *, count: bool = False) -> str:
    if value is None:
        return "none"
    return str(int(value)) if count else f"{value:.2f}"


def card_changes(before: AgentCard, after: AgentCard) -> list[str]:
    """One line per score of the card, ``old -> new`` (or ``(unchanged)``), for the user.

    The scores are the clean mean, std and game count, the random-policy score and the
    human-normalized score (the one ``sap-rl evaluate`` picks its default agent by).

    Example:
        >>> from sap_rl.rl.agent import Score
        >>> old = AgentCard(name="a", game="Krull", env_id="ALE/Krull-v5",
        ...                 clean_score=Score(3045.3, 976.9, 30), random_score=1686.0)
        >>> new = dataclasses.replace(old, clean_score=Score(2012.0, 0.0, 1))
        >>> for line in card_changes(old, new):
        ...     print(line)
        clean_score.mean: 3045.30 -> 2012.00
        clean_score.std: 976.90 -> 0.00
        clean_score.episodes: 30 -> 1
        random_score: 1686.00 (unchanged)
        human_normalized: none (unchanged)
    """
    pairs: list[tuple[str, float | None, float | None]] = [
        ("clean_score.mean", before.clean_score.mean, after.clean_score.mean),
        ("clean_score.std", before.clean_score.std, after.clean_score.std),
        ("clean_score.episodes", before.clean_score.episodes, after.clean_score.episodes),
        ("random_score", before.random_score, after.random_score),
        ("human_normalized", before.human_normalized, after.human_normalized),
    ]
    lines = []
    for name, old, new in pairs:
        count = name.endswith("episodes")
        # Compare the printed values: a float that moved in the 10th digit did not change.
        old_text, new_text = _number(old, count=count), _number(new, count=count)
        change = "(unchanged)" if old_text == new_text else f"-> {new_text}"
        lines.append(f"{name}: {old_text} {change}")
    return lines


def score_agent(
    path: str | os.PathLike[str],
    *,
    episodes: int = 30,
    n_envs: int = 5,
    write: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ScoreResult:
    """Play ``episodes`` whole games with the agent and a random policy; update the card if asked.

    Args:
        path: agent folder (``model.safetensors`` + ``card.json``).
        episodes: whole games to play (the same seeded games for the agent and the random policy).
        n_envs: games played in parallel.
        write: replace ``card.json`` (atomically) with the measured scores.
        force: with ``write``, replace it even if the card's score is over more games than
            ``episodes``.
        progress: a progress bar over games when stderr is a terminal (else, and without it,
            one INFO log line per game).

    Returns:
        The card before and with the new scores, and whether it was written.

    Raises:
        UserError: unreadable agent folder, ``episodes``/``n_envs`` < 1, or ``write`` over a card
            with more games than ``episodes`` without ``force`` (checked before any game).

    Example:
        >>> result = score_agent("agents/roadrunner-ddqn", episodes=2)  # doctest: +SKIP
        >>> result.written  # doctest: +SKIP
        False
    """
    if episodes < 1 or n_envs < 1:
        raise UserError(f"episodes and n_envs must be >= 1, got {episodes} and {n_envs}")
    net, card = load_agent(path)
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    card_path = folder / CARD_FILE
    had = card.clean_score.episodes
    if write and not force and episodes < had:
        raise UserError(
            f"{card_path} has a score over {had} games; refusing to replace it with one over "
            f"{episodes} (play --episodes {had} or more, or add --force)"
        )
    game = resolve_game(card.game)
    cfg = scoring_config(card, episodes=episodes, n_envs=n_envs)
    start = time.perf_counter()
    with game_progress(episodes, f"{card.name}: agent", bar=progress) as on_game:
        clean = score_of(agent_games(net, game, cfg, episodes=episodes, on_game=on_game))
    with game_progress(episodes, f"{card.name}: random policy", bar=progress) as on_game:
        rand = random_score(game, cfg, episodes=episodes, on_game=on_game)
    wall = time.perf_counter() - start
    logger.info(
        "%s: %.2f +- %.2f over %d games (random %.2f) in %.0f s",
        card.name, clean.mean, clean.std, episodes, rand.mean, wall,
    )  # fmt: skip
    updated = dataclasses.replace(
        card,
        clean_score=clean,
        random_score=rand.mean,
        evaluation={
            **card.evaluation,
            "episodes": episodes,
            **SCORING,
            "n_envs": cfg.eval.n_envs,
            "random_policy_std": rand.std,
            "scoring_wall_time_s": round(wall, 1),
        },
    ).with_reference_scores()
    if write:
        atomic_write_json(card_path, updated.to_json())
    return ScoreResult(before=card, after=updated, card_path=card_path, written=write)
