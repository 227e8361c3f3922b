"""``sap-rl train`` / ``sap-rl agents`` on the command line: output and bad-input behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sap_rl.cli import main


def _fails_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    code = _run(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert match in lines[0], lines[0]
    assert "Traceback" not in captured.err


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside main
        return int(exit_.code or 0)


def test_unknown_game(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(["train", "--game", "Pnog"], capsys, "did you mean Pong?")


def test_bad_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("default:\n  dqn:\n    learning_rat: 0.1\n")
    _fails_with_one_line(
        ["train", "--game", "Pong", "--config", str(config)],
        capsys,
        "unknown config key 'dqn.learning_rat'; did you mean 'learning_rate'",
    )


def test_bad_config_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("eval:\n  episodes: many\n")
    _fails_with_one_line(
        ["train", "--game", "Pong", "--config", str(config)], capsys, "'eval.episodes'"
    )


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_bad_timesteps(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(
        ["train", "--game", "Pong", f"--timesteps={value}"], capsys, "expected a positive integer"
    )


def test_missing_game_and_bad_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(["train"], capsys, "--game is required")
    _fails_with_one_line(["train", "--resume"], capsys, "--resume needs --out")
    _fails_with_one_line(
        ["train", "--resume", "--out", str(tmp_path)], capsys, "config.yaml not found"
    )
    _fails_with_one_line(["train", "--game", "Pong", "--device", "tpu"], capsys, "'device'")
    _fails_with_one_line(["train", "--game", "Pong", "--config", "nope"], capsys, "not found")


def test_existing_run_needs_resume(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(
        ["train", "--game", "breakout", "--out", str(trained_run)],
        capsys,
        "pass --resume",
    )
    _fails_with_one_line(
        ["train", "--resume", "--game", "Pong", "--out", str(trained_run)],
        capsys,
        "trains Breakout, not Pong",
    )


def test_agents_lists_cards_and_rejects_missing_folder(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agents", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "Breakout" in out and "agent" in out
    _fails_with_one_line(["agents", str(tmp_path / "none")], capsys, "no agent folder")


def test_agents_marks_unreadable_cards_and_lists_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sap_rl.rl.agent import AgentCard, QNetwork, save_agent

    save_agent(tmp_path / "good", QNetwork(6), AgentCard(name="good", game="Pong",
                                                         env_id="ALE/Pong-v5"))  # fmt: skip
    bad = {"latin1": b'{"name": "caf\xe9"}', "broken": b'{"name": ', "list": b"[1, 2]",
           "nogame": b'{"name": "x", "game": "NoSuchGame", "env_id": "x"}'}  # fmt: skip
    for name, data in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_bytes(data)
    assert main(["agents", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    assert sorted(rows) == ["broken", "good", "latin1", "list", "nogame"]
    assert "Pong" in rows["good"] and "unreadable" not in rows["good"]
    assert "(unreadable card: " in rows["latin1"] and "not UTF-8" in rows["latin1"]
    assert "not valid JSON" in rows["broken"]
    assert "expected a mapping" in rows["list"]
    assert "unknown game 'NoSuchGame'" in rows["nogame"]


def test_help_is_fast_and_lists_train() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sap_rl.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--resume" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported
    assert "stable_baselines3" not in imported


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_bad_time_limit(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(
        ["train", "--game", "Pong", f"--time-limit={value}"], capsys, "expected a positive number"
    )
