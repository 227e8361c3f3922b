"""Re-score an agent folder on more whole games (``sap-rl score``).

Training ends with ``eval.final_episodes`` games; a shipped agent's card needs more (the zoo uses
30). :func:`score_agent` plays ``episodes`` whole games, greedy and unclipped, with the card's own
preprocessing and evaluation seed, plays a seeded uniform random policy on the same games, and
rewrites ``card.json`` atomically with both scores (the weights and their checksum are untouched).

Example:
    >>> card = score_agent("agents/krull-ddqn", episodes=30)  # doctest: +SKIP
    >>> card.clean_score.episodes  # doctest: +SKIP
    30
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json
from sap_rl.rl.agent import CARD_FILE, AgentCard, Score, load_agent
from sap_rl.rl.envs import AtariPreprocessing, summarize
from sap_rl.rl.games import resolve_game
from sap_rl.rl.train import evaluate_q_net, random_score
from sap_rl.rl.train_config import EvalConfig, TrainConfig

__all__ = ["score_agent", "scoring_config"]

logger = logging.getLogger(__name__)


def scoring_config(card: AgentCard, *, episodes: int, n_envs: int) -> TrainConfig:
    """The :class:`TrainConfig` that replays ``card``'s evaluation protocol on ``episodes`` games.

    Preprocessing comes from the card's ``wrappers`` block, the game seeds from its
    ``evaluation.seed`` (games ``seed .. seed + episodes - 1``, the card's first games included).
    """
    fields = {f.name for f in dataclasses.fields(AtariPreprocessing)}
    env = {k: v for k, v in card.wrappers.items() if k in fields}
    seed = int(card.seed or 0)
    eval_seed = int(card.evaluation.get("seed", seed + EvalConfig.seed_offset))
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


def score_agent(path: str | os.PathLike[str], *, episodes: int = 30, n_envs: int = 5) -> AgentCard:
    """Play ``episodes`` whole games with the agent and a random policy; update ``card.json``.

    Args:
        path: agent folder (``model.safetensors`` + ``card.json``).
        episodes: whole games to play (the same seeded games for the agent and the random policy).
        n_envs: games played in parallel.

    Returns:
        The updated card (also written to ``path/card.json``).

    Raises:
        UserError: unreadable agent folder or ``episodes``/``n_envs`` < 1.
    """
    if episodes < 1 or n_envs < 1:
        raise UserError(f"episodes and n_envs must be >= 1, got {episodes} and {n_envs}")
    net, card = load_agent(path)
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    game = resolve_game(card.game)
    cfg = scoring_config(card, episodes=episodes, n_envs=n_envs)
    start = time.perf_counter()
    clean = summarize(evaluate_q_net(net, game, cfg, episodes=episodes))
    rand = random_score(game, cfg, episodes=episodes)
    wall = time.perf_counter() - start
    logger.info(
        "%s: %.2f +- %.2f over %d games (random %.2f) in %.0f s",
        card.name, clean["mean"], clean["std"], episodes, rand["mean"], wall,
    )  # fmt: skip
    updated = dataclasses.replace(
        card,
        clean_score=Score(mean=clean["mean"], std=clean["std"], episodes=int(clean["episodes"])),
        random_score=float(rand["mean"]),
        evaluation={
            **card.evaluation,
            "episodes": episodes,
            "n_envs": cfg.eval.n_envs,
            "random_policy_std": rand["std"],
            "scoring_wall_time_s": round(wall, 1),
        },
    ).with_reference_scores()
    atomic_write_json(folder / CARD_FILE, updated.to_json())
    return updated
