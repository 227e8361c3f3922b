"""Finding and ranking agent folders: ``--agent`` as a path, a name under ``agents/``, or none.

Example:
    >>> resolve_agent("krull-ddqn").name
    'krull-ddqn'
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from sap_rl.errors import UserError
from sap_rl.rl.agent import CARD_FILE, read_card

__all__ = ["TRAIN_HINT", "default_agent", "find_agents", "resolve_agent"]

TRAIN_HINT = "sap-rl train --game Pong --out agents/pong-ddqn"


def _agent_roots() -> list[Path]:
    roots = [Path.cwd() / "agents", Path(__file__).resolve().parents[2] / "agents"]
    return list(dict.fromkeys(root.resolve() for root in roots))


def find_agents() -> list[Path]:
    """Agent folders (holding a ``card.json``) under ``agents/`` of the working dir and the repo.

    Example:
        >>> agents = find_agents()
        >>> all((folder / CARD_FILE).is_file() for folder in agents)
        True
        >>> "krull-ddqn" in [folder.name for folder in agents]  # shipped in the repo's agents/
        True
    """
    found: list[Path] = []
    for root in _agent_roots():
        if root.is_dir():
            found.extend(sorted(card.parent for card in root.rglob(CARD_FILE)))
    return found


def default_agent(shipped: Sequence[Path]) -> Path:
    """The agent ``sap-rl evaluate`` plays when none is named: the best of ``shipped``.

    Best is the highest human-normalized clean score on the agent's card (the standard Atari
    reference scores); cards without one rank last, and ties go to the first in ``shipped``.
    The strongest agent shows an attack's effect most plainly.

    Example:
        >>> default_agent(find_agents()) in find_agents()
        True
    """
    if not shipped:
        raise ValueError("no agents to choose from")

    def rank(folder: Path) -> float:
        try:
            normalized = read_card(folder).with_reference_scores().human_normalized
        except UserError:
            return -math.inf
        return -math.inf if normalized is None else normalized

    return max(shipped, key=rank)


def resolve_agent(agent: str | os.PathLike[str] | None) -> Path:
    """The agent folder for a path, a name under ``agents/``, or ``None`` (:func:`default_agent`).

    A training run folder (``runs/pong-ddqn-0``) resolves to the agent it exported (``agent/``).

    Raises:
        UserError: no such folder or name, or no agent installed (says how to train one).

    Example:
        >>> resolve_agent("no-such-agent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: agent not found: no-such-agent ...
    """
    if agent is None:
        shipped = find_agents()
        if not shipped:
            raise UserError(
                f"no agent is installed in agents/ and no --agent was given; train one with: "
                f"{TRAIN_HINT}"
            )
        return default_agent(shipped)
    path = Path(agent)
    candidates = [path]
    if not path.exists() and path.name == str(agent):
        candidates += [root / path.name for root in _agent_roots()]
    for candidate in candidates:
        if candidate.exists():
            # A training run folder holds its exported agent in ``agent/``.
            run_agent = candidate / "agent"
            if not (candidate / CARD_FILE).exists() and (run_agent / CARD_FILE).is_file():
                return run_agent
            return candidate
    known = [p.parent.name if p.name == "agent" else p.name for p in find_agents()]
    names = ", ".join(known) or f"none installed (train one: {TRAIN_HINT})"
    raise UserError(f"agent not found: {agent} (not a folder; shipped agents: {names})")
