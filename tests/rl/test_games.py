"""Game names, ALE ids and reference scores."""

from __future__ import annotations

import pytest

from sap_rl.errors import UserError
from sap_rl.rl.games import ATARI_100K, REFERENCE_SCORES, known_games, resolve_game


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Pong", "Pong"),
        ("pong", "Pong"),
        ("PONG", "Pong"),
        ("space_invaders", "SpaceInvaders"),
        ("Space Invaders", "SpaceInvaders"),
        ("ALE/Breakout-v5", "Breakout"),
        ("BreakoutNoFrameskip-v4", "Breakout"),
        ("roadrunner", "RoadRunner"),
        ("tic_tac_toe_3d", "TicTacToe3D"),  # a ROM outside the score tables
    ],
)
def test_resolve_is_case_insensitive(name: str, expected: str) -> None:
    game = resolve_game(name)
    assert game.name == expected
    assert game.env_id == f"ALE/{expected}-v5"


def test_every_ale_game_is_known_and_maps_to_a_registered_id() -> None:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    names = known_games()
    assert len(names) >= 100
    for name in names:
        assert resolve_game(name).env_id in gym.registry


def test_unknown_game_lists_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown game 'Pnog'; did you mean Pong\?") as err:
        resolve_game("Pnog")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="Breakout"):
        resolve_game("breakot")
    with pytest.raises(UserError, match="no close match"):
        resolve_game("xyzzy")
    with pytest.raises(UserError):
        resolve_game("")


def test_reference_scores_cover_atari_100k_and_paper_games() -> None:
    extra = ["Pong", "Breakout", "Freeway", "BankHeist", "RoadRunner", "Seaquest", "SpaceInvaders"]
    for name in [*ATARI_100K, *extra]:
        ref = resolve_game(name).reference
        assert ref is not None, name
        assert ref.human > ref.random
    assert len(ATARI_100K) == 26
    assert len(REFERENCE_SCORES) == 57
    # Spot checks against Mnih et al. 2015 / Badia et al. 2020.
    assert REFERENCE_SCORES["Pong"].random == -20.7
    assert REFERENCE_SCORES["Breakout"].human == 30.5
    assert REFERENCE_SCORES["RoadRunner"].random == 11.5


def test_human_normalized_score() -> None:
    pong = resolve_game("Pong")
    assert pong.normalized(-20.7) == pytest.approx(0.0)
    assert pong.normalized(14.6) == pytest.approx(1.0)
    assert resolve_game("tic_tac_toe_3d").normalized(1.0) is None
