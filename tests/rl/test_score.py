"""``sap-rl score``: re-scoring an agent folder on more whole games (real ALE, tiny agent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.rl.agent import read_card
from sap_rl.rl.games import resolve_game
from sap_rl.rl.score import score_agent


def test_rescoring_the_training_games_reproduces_the_card(agent_copy: Path) -> None:
    before = read_card(agent_copy)
    assert before.clean_score.episodes == 2  # the tiny config's final_episodes
    after = score_agent(agent_copy, episodes=2, n_envs=before.evaluation["n_envs"])
    assert after.clean_score == before.clean_score
    assert after.random_score == before.random_score
    assert after.sha256 == before.sha256


def test_cli_rewrites_the_card_with_more_games(
    agent_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = (agent_copy / "model.safetensors").read_bytes()
    assert main(["score", str(agent_copy), "--episodes", "3", "--n-envs", "2"]) == 0
    out = capsys.readouterr().out
    card = read_card(agent_copy)
    assert card.clean_score.episodes == 3 and card.evaluation["episodes"] == 3
    assert card.random_score is not None
    reference = resolve_game("Breakout").reference
    assert reference is not None
    assert card.human_score == reference.human
    assert card.reference_random_score == reference.random
    expected = (card.clean_score.mean - reference.random) / (reference.human - reference.random)
    assert card.human_normalized == pytest.approx(expected)
    assert f"over 3 games; random policy {card.random_score:.2f}" in out
    assert (agent_copy / "model.safetensors").read_bytes() == weights
    assert json.loads((agent_copy / "card.json").read_text())["clean_score"]["episodes"] == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["score", "no/such/agent"], "agent folder not found"),
        (["score", "agents", "--episodes", "0"], "expected a positive integer"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert match in err[-1]
    assert not any("Traceback" in line for line in err)
