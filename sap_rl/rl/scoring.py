"""An agent's clean and random-policy scores, as training and ``sap-rl score`` measure them.

Both play :func:`~sap_rl.rl.play.play_matched_games` (game ``g`` on an env reset with seed
``seed + g``, per-game random streams) on the evaluation games of a :class:`TrainConfig`: games
``cfg.seed + cfg.eval.seed_offset + g`` with the config's preprocessing, and the same seed for
the policies' random streams. The trainer (:mod:`sap_rl.rl.train`) scores its periodic and final
networks here, ``sap-rl score`` (:mod:`sap_rl.rl.score`) re-scores an agent folder, so a card
re-scored on its own number of games gives the card's numbers.

A score's ``std`` is the sample standard deviation (ddof=1, 0 for one game), as in every
``summary.csv`` (:func:`sap_rl.report.summarize`).

Example:
    >>> from sap_rl.rl.agent import QNetwork
    >>> from sap_rl.rl.envs import AtariPreprocessing
    >>> from sap_rl.rl.train_config import TrainConfig
    >>> cfg = TrainConfig(env=AtariPreprocessing(max_episode_frames=200))
    >>> games = agent_games(QNetwork(4), "Breakout", cfg, episodes=2)
    >>> [g.seed for g in games]
    [10000, 10001]
    >>> score_of(games).episodes
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sap_rl.report import summarize
from sap_rl.rl.agent import Score
from sap_rl.rl.games import Game
from sap_rl.rl.play import (
    GamePolicy,
    GameRecord,
    greedy_policy,
    make_eval_envs,
    play_matched_games,
    random_policy,
)
from sap_rl.rl.train_config import TrainConfig

__all__ = ["SCORING", "agent_games", "eval_seed", "random_score", "score_of"]

#: What a card's ``evaluation`` block says about how its scores were measured.
SCORING = {
    "games": "matched: game g on an env reset with seed + g, per-game random streams",
    "std": "sample standard deviation over the games (ddof=1)",
}


def eval_seed(cfg: TrainConfig) -> int:
    """Seed of the first evaluation game (and of the policies' random streams).

    Example:
        >>> eval_seed(TrainConfig(seed=3))
        10003
    """
    return cfg.seed + cfg.eval.seed_offset


def score_of(games: Sequence[GameRecord]) -> Score:
    """Mean, sample std (ddof=1) and count of the games' scores.

    Example:
        >>> from sap_rl.rl.play import GameRecord
        >>> score_of([GameRecord(0, 0, 1.0, 10), GameRecord(1, 1, 3.0, 10)])
        Score(mean=2.0, std=1.4142135623730951, episodes=2)
    """
    (row,) = summarize([("agent", "clean", 0.0, g.reward) for g in games], random_score=0.0)
    return Score(mean=row.mean, std=row.std, episodes=row.n)


def _play(
    game: Game | str,
    cfg: TrainConfig,
    policy: GamePolicy,
    episodes: int,
    on_game: Callable[[GameRecord], None] | None,
) -> list[GameRecord]:
    envs = make_eval_envs(game, min(cfg.eval.n_envs, episodes), cfg.env)
    try:
        return play_matched_games(envs, policy, episodes, seed=eval_seed(cfg), on_game=on_game)
    finally:
        for env in envs:
            env.close()


def agent_games(
    q_net: torch.nn.Module,
    game: Game | str,
    cfg: TrainConfig,
    *,
    episodes: int,
    on_game: Callable[[GameRecord], None] | None = None,
) -> list[GameRecord]:
    """Play ``episodes`` evaluation games with the (epsilon-)greedy policy of ``q_net``.

    ``q_net`` is put in eval mode for the games and back afterwards; ``on_game`` gets each
    finished game (a progress report, :func:`sap_rl.rl.play.game_progress`).

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> from sap_rl.rl.envs import AtariPreprocessing
        >>> cfg = TrainConfig(env=AtariPreprocessing(max_episode_frames=200))
        >>> len(agent_games(QNetwork(4), "Breakout", cfg, episodes=1))
        1
    """
    device = next(q_net.parameters()).device
    was_training = q_net.training
    q_net.eval()
    try:
        policy = greedy_policy(q_net, device=device, epsilon=cfg.eval.epsilon, seed=eval_seed(cfg))
        return _play(game, cfg, policy, episodes, on_game)
    finally:
        q_net.train(was_training)


def random_score(
    game: Game | str,
    cfg: TrainConfig,
    *,
    episodes: int,
    on_game: Callable[[GameRecord], None] | None = None,
) -> Score:
    """Score of a seeded uniform random policy on the same games as :func:`agent_games`.

    Example:
        >>> from sap_rl.rl.envs import AtariPreprocessing
        >>> cfg = TrainConfig(env=AtariPreprocessing(max_episode_frames=200))
        >>> random_score("Breakout", cfg, episodes=2).episodes
        2
    """
    from sap_rl.rl.envs import n_actions

    policy = random_policy(n_actions(game), seed=eval_seed(cfg))
    return score_of(_play(game, cfg, policy, episodes, on_game))
