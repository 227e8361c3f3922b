"""Atari game names, their ALE ids and the standard human / random reference scores.

Games are named by their short CamelCase name (``Pong``, ``Breakout``, ``SpaceInvaders``);
lookup is case-insensitive and ignores ``_``, ``-`` and spaces, so ``space_invaders`` (the ALE
ROM id) and ``spaceinvaders`` work too. Any game that the installed ale-py registers is accepted;
an unknown name is a :class:`~sap_rl.errors.UserError` listing close matches.

Reference scores are the per-game ``random`` and ``human`` scores of the standard tables
(Mnih et al. 2015, as collected by Badia et al. 2020, "Agent57", Table H.4), used for
human-normalised scores.

Example:
    >>> game = resolve_game("pong")
    >>> game.name, game.env_id
    ('Pong', 'ALE/Pong-v5')
    >>> REFERENCE_SCORES["Pong"].random
    -20.7
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from sap_rl.errors import UserError


@dataclass(frozen=True)
class ReferenceScore:
    """Score of a uniform random policy and of a human tester (whole games, unclipped)."""

    random: float
    human: float


@dataclass(frozen=True)
class Game:
    """A resolved Atari game.

    Attributes:
        name: canonical short name (``"SpaceInvaders"``).
        env_id: gymnasium id registered by ale-py (``"ALE/SpaceInvaders-v5"``).
        reference: human / random reference scores, or ``None`` for games outside the tables.
    """

    name: str
    env_id: str
    reference: ReferenceScore | None

    def normalized(self, score: float) -> float | None:
        """Human-normalised score ``(score - random) / (human - random)``, ``None`` if unknown."""
        if self.reference is None:
            return None
        ref = self.reference
        return (score - ref.random) / (ref.human - ref.random)


def _scores(table: dict[str, tuple[float, float]]) -> dict[str, ReferenceScore]:
    return {name: ReferenceScore(random=r, human=h) for name, (r, h) in table.items()}


# (random, human); 57-game table of Badia et al. 2020 (Agent57, Table H.4), which reproduces
# the random and human scores of Mnih et al. 2015 / Wang et al. 2016. Includes the 26 Atari-100k
# games.
REFERENCE_SCORES: dict[str, ReferenceScore] = _scores(
    {
        "Alien": (227.8, 7127.7),
        "Amidar": (5.8, 1719.5),
        "Assault": (222.4, 742.0),
        "Asterix": (210.0, 8503.3),
        "Asteroids": (719.1, 47388.7),
        "Atlantis": (12850.0, 29028.1),
        "BankHeist": (14.2, 753.1),
        "BattleZone": (2360.0, 37187.5),
        "BeamRider": (363.9, 16926.5),
        "Berzerk": (123.7, 2630.4),
        "Bowling": (23.1, 160.7),
        "Boxing": (0.1, 12.1),
        "Breakout": (1.7, 30.5),
        "Centipede": (2090.9, 12017.0),
        "ChopperCommand": (811.0, 7387.8),
        "CrazyClimber": (10780.5, 35829.4),
        "Defender": (2874.5, 18688.9),
        "DemonAttack": (152.1, 1971.0),
        "DoubleDunk": (-18.6, -16.4),
        "Enduro": (0.0, 860.5),
        "FishingDerby": (-91.7, -38.7),
        "Freeway": (0.0, 29.6),
        "Frostbite": (65.2, 4334.7),
        "Gopher": (257.6, 2412.5),
        "Gravitar": (173.0, 3351.4),
        "Hero": (1027.0, 30826.4),
        "IceHockey": (-11.2, 0.9),
        "Jamesbond": (29.0, 302.8),
        "Kangaroo": (52.0, 3035.0),
        "Krull": (1598.0, 2665.5),
        "KungFuMaster": (258.5, 22736.3),
        "MontezumaRevenge": (0.0, 4753.3),
        "MsPacman": (307.3, 6951.6),
        "NameThisGame": (2292.3, 8049.0),
        "Phoenix": (761.4, 7242.6),
        "Pitfall": (-229.4, 6463.7),
        "Pong": (-20.7, 14.6),
        "PrivateEye": (24.9, 69571.3),
        "Qbert": (163.9, 13455.0),
        "Riverraid": (1338.5, 17118.0),
        "RoadRunner": (11.5, 7845.0),
        "Robotank": (2.2, 11.9),
        "Seaquest": (68.4, 42054.7),
        "Skiing": (-17098.1, -4336.9),
        "Solaris": (1236.3, 12326.7),
        "SpaceInvaders": (148.0, 1668.7),
        "StarGunner": (664.0, 10250.0),
        "Surround": (-10.0, 6.5),
        "Tennis": (-23.8, -8.3),
        "TimePilot": (3568.0, 5229.2),
        "Tutankham": (11.4, 167.6),
        "UpNDown": (533.4, 11693.2),
        "Venture": (0.0, 1187.5),
        "VideoPinball": (0.0, 17667.9),
        "WizardOfWor": (563.5, 4756.5),
        "YarsRevenge": (3092.9, 54576.9),
        "Zaxxon": (32.5, 9173.3),
    }
)

#: The 26 games of the Atari 100k benchmark (Kaiser et al. 2020).
ATARI_100K: tuple[str, ...] = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)  # fmt: skip


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


@functools.lru_cache(maxsize=1)
def _ale_games() -> dict[str, str]:
    """Normalised key -> canonical CamelCase name of every game ale-py registers (``ALE/*-v5``)."""
    games = {_key(name): name for name in REFERENCE_SCORES}
    try:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        registered = [k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5")]
    except Exception:  # pragma: no cover - ale-py missing or broken
        registered = []
    for name in registered:
        games.setdefault(_key(name), name)
    return games


def known_games() -> list[str]:
    """Sorted canonical names of every game that :func:`resolve_game` accepts.

    Example:
        >>> "Breakout" in known_games()
        True
    """
    return sorted(set(_ale_games().values()))


def resolve_game(name: str) -> Game:
    """Resolve a user-supplied game name (case-insensitive) to a :class:`Game`.

    Args:
        name: ``"Pong"``, ``"pong"``, ``"space_invaders"``, ``"ALE/Pong-v5"``...

    Raises:
        UserError: the name is not a known game; the message lists close matches.

    Example:
        >>> resolve_game("SPACE_invaders").env_id
        'ALE/SpaceInvaders-v5'
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError("game name must be a non-empty string, e.g. Pong")
    raw = name.strip()
    match = re.fullmatch(r"(?:ALE/)?([A-Za-z0-9_\- ]+?)(?:NoFrameskip)?(?:-v\d+)?", raw)
    key = _key(match.group(1) if match else raw)
    games = _ale_games()
    if key not in games:
        choices = known_games()
        close = difflib.get_close_matches(raw, choices, n=3, cutoff=0.6)
        if not close:
            lowered = {c.lower(): c for c in choices}
            close = [lowered[c] for c in difflib.get_close_matches(key, list(lowered), n=3)]
        hint = f"did you mean {' or '.join(close)}?" if close else "no close match."
        raise UserError(
            f"unknown game {raw!r}; {hint} Known games: {', '.join(ATARI_100K[:6])}, ... "
            f"({len(choices)} in all, any ROM that ale-py ships)"
        )
    canonical = games[key]
    return Game(
        name=canonical,
        env_id=f"ALE/{canonical}-v5",
        reference=REFERENCE_SCORES.get(canonical),
    )
