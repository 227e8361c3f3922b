"""``sap-rl score``: re-scoring an agent folder on more whole games (real ALE, tiny agent)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.rl.agent import read_card
from sap_rl.rl.games import resolve_game
from sap_rl.rl.score import score_agent
from sap_rl.rl.scoring import SCORING

SHIPPED = Path(__file__).resolve().parents[2] / "agents"


def test_rescoring_reproduces_a_card_trained_with_the_same_code(agent_copy: Path) -> None:
    # The tiny agent is trained by this code (conftest.trained_run): training's final games and
    # sap-rl score are one play loop on the same matched games, so the numbers are the same,
    # whatever the number of games played at once.
    before = read_card(agent_copy)
    card_bytes = (agent_copy / "card.json").read_bytes()
    assert before.clean_score.episodes == 2  # the tiny config's final_episodes
    assert before.evaluation["std"] == SCORING["std"] and before.evaluation["n_envs"] == 2
    result = score_agent(agent_copy, episodes=2, n_envs=1)
    after = result.after
    assert after.clean_score == before.clean_score
    assert after.random_score == before.random_score
    assert after.sha256 == before.sha256
    assert result.before == before and not result.written
    assert (agent_copy / "card.json").read_bytes() == card_bytes  # no write=True: untouched


def test_cli_rewrites_the_card_with_more_games(
    agent_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = (agent_copy / "model.safetensors").read_bytes()
    before = read_card(agent_copy)
    argv = ["score", str(agent_copy), "--episodes", "3", "--n-envs", "2", "--write"]
    assert main(argv) == 0
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
    # it says what it changed, old -> new
    assert f"wrote {agent_copy / 'card.json'}:" in out
    assert "  clean_score.episodes: 2 -> 3" in out
    old_mean, new_mean = before.clean_score.mean, card.clean_score.mean
    change = "(unchanged)" if f"{old_mean:.2f}" == f"{new_mean:.2f}" else f"-> {new_mean:.2f}"
    assert f"  clean_score.mean: {old_mean:.2f} {change}" in out
    assert "  human_normalized: " in out and "  random_score: " in out
    assert not list(agent_copy.glob(".card.json.*"))  # the atomic write left no temporary file


def test_score_writes_only_with_write_and_fewer_games_only_with_force(
    agent_copy: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    card_path = agent_copy / "card.json"
    original = card_path.read_bytes()  # a score over 2 games
    logging.getLogger("sap_rl.progress").setLevel(logging.NOTSET)  # as in a fresh process
    # no --write: the scores and what would change are printed, the card is untouched
    assert main(["score", str(agent_copy), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert card_path.read_bytes() == original
    assert f"{card_path} not written; with --write it would change:" in out
    assert "  clean_score.episodes: 2 -> 1" in out
    assert "--write needs --force to replace it" in out
    # without a terminal, one log line per finished game (agent, then random policy), shown at
    # the command line's default log level
    games = [r.getMessage() for r in caplog.records if ": game " in r.getMessage()]
    name = read_card(agent_copy).name
    assert len(games) == 2 and games[0].startswith(f"{name}: agent: game 1/1 scored ")
    assert games[1].startswith(f"{name}: random policy: game 1/1 scored ")
    # --write over a card with more games: refused before any game, card untouched
    assert main(["score", str(agent_copy), "--episodes", "1", "--write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "has a score over 2 games; refusing to replace it with one over 1" in err[0]
    assert card_path.read_bytes() == original
    # --write --force replaces it and says so
    assert main(["score", str(agent_copy), "--episodes", "1", "--write", "--force"]) == 0
    out = capsys.readouterr().out
    assert read_card(agent_copy).clean_score.episodes == 1
    assert f"wrote {card_path}:" in out and "  clean_score.episodes: 2 -> 1" in out


def test_a_shipped_card_is_not_replaced_by_fewer_games(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reported accident: `sap-rl score AGENT --episodes 2` on a shipped 30-game card.
    folder = tmp_path / "roadrunner-ddqn"
    shutil.copytree(SHIPPED / "roadrunner-ddqn", folder)
    original = (folder / "card.json").read_bytes()
    assert main(["score", str(folder), "--episodes", "2", "--write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "has a score over 30 games; refusing" in err[0] and "--force" in err[0]
    assert (folder / "card.json").read_bytes() == original
    assert main(["score", str(folder), "--episodes", "2", "--force"]) == 2
    assert "--force only applies with --write" in capsys.readouterr().err


def test_help_says_the_card_is_written_only_with_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--write" in out and "--force" in out
    assert "The card is replaced only with --write" in out


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
