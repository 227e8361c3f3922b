"""Atari reinforcement learning: environments, Double DQN, perturbed play and the agent zoo.

Public names are imported lazily (on first attribute access), so ``import sap_rl.rl`` stays cheap
and does not pull in torch, gymnasium or stable-baselines3.

Example:
    >>> from sap_rl.rl import resolve_game
    >>> resolve_game("pong").env_id
    'ALE/Pong-v5'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sap_rl.rl.agent import AgentCard, QNetwork, load_agent, q_network_from_sb3, save_agent
    from sap_rl.rl.dqn import DoubleDQN
    from sap_rl.rl.envs import make_env, make_vec_env, obs_to_tensor
    from sap_rl.rl.games import resolve_game
    from sap_rl.rl.play import play_matched_games

# name -> module that defines it
_LAZY = {
    "AgentCard": "sap_rl.rl.agent",
    "QNetwork": "sap_rl.rl.agent",
    "load_agent": "sap_rl.rl.agent",
    "save_agent": "sap_rl.rl.agent",
    "q_network_from_sb3": "sap_rl.rl.agent",
    "DoubleDQN": "sap_rl.rl.dqn",
    "make_env": "sap_rl.rl.envs",
    "make_vec_env": "sap_rl.rl.envs",
    "obs_to_tensor": "sap_rl.rl.envs",
    "play_matched_games": "sap_rl.rl.play",
    "resolve_game": "sap_rl.rl.games",
}

__all__ = [
    "AgentCard",
    "DoubleDQN",
    "QNetwork",
    "load_agent",
    "make_env",
    "make_vec_env",
    "obs_to_tensor",
    "play_matched_games",
    "q_network_from_sb3",
    "resolve_game",
    "save_agent",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sap_rl.rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
