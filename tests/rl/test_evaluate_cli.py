"""``sap-rl evaluate``: a small real run, config files with flag overrides, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sap_rl.cli import main
from sap_rl.grid import set_threads
from sap_rl.rl.agent import AgentCard, QNetwork, save_agent

GAME = "Assault"
SMALL = ["--episodes", "2", "--n-envs", "2", "--max-steps", "50", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One thread for torch and SAP's numba kernels (the shared test machine is busy)."""
    previous = set_threads(1)
    yield
    set_threads(*previous)


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("agents") / "assault-cli"
    card = AgentCard(name="assault-cli", game=GAME, env_id=f"ALE/{GAME}-v5", random_score=0.0)
    save_agent(folder, QNetwork(7), card)
    return folder


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _dense_args(agent_dir: Path, out: Path) -> list[str]:
    """``sap-rl evaluate`` of the test agent: dense, FGSM at eps 2, the small settings."""
    return ["evaluate", "--agent", str(agent_dir), "--defense", "dense", "--eps", "0,2",
            "--out", str(out), *SMALL]  # fmt: skip


def test_evaluate_runs_and_prints_the_table(
    agent_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = _dense_args(agent_dir, out)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == [
        "defense", "attack", "eps", "n", "mean", "std", "sem", "relative", "normalized",
    ]  # fmt: skip
    assert "2 cells played" in printed
    assert [(r["defense"], float(r["eps"])) for r in _summary(out)] == [("dense", 0), ("dense", 2)]
    for name in ("episodes.csv", "summary.json", "relative_reward.png"):
        assert (out / name).is_file()
    assert main(args) == 0
    assert "0 cells played, 2 reused" in capsys.readouterr().out


def test_time_limit_flag(
    agent_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = _dense_args(agent_dir, out)
    assert main([*args, "--time-limit", "0.000001"]) == 0
    printed = capsys.readouterr().out
    assert "time limit reached: 2 cells not played; rerun the same command" in printed
    assert main(args) == 0
    assert "2 cells played" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["cells_missing"] == []


def test_config_file_with_flag_overrides(agent_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        "defenses: [dense]\nattacks: [fgsm]\neps: [0, 1]\nepisodes: 2\nn_envs: 2\nmax_steps: 50\n"
    )
    out = tmp_path / "eval"
    code = main(["evaluate", "--config", str(config), "--agent", str(agent_dir), "--eps", "0,3",
                 "--episodes", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert [float(r["eps"]) for r in _summary(out)] == [0.0, 3.0]
    meta = json.loads((out / "summary.json").read_text())
    assert meta["config"]["episodes"] == 1 and meta["config"]["max_steps"] == 50


def test_shipped_configs_are_valid() -> None:
    from sap_rl.config import load_config
    from sap_rl.rl.eval_config import AtariEvalConfig

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "eval").glob("*.yaml"))
    assert files
    for path in files:
        load_config(AtariEvalConfig, path)


def _broken_agent(tmp_path: Path, agent_dir: Path) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "card.json").write_bytes((agent_dir / "card.json").read_bytes())
    return broken


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--defense", "dense,sap"], "unknown defense 'sap'"),
        (["--attack", "deepfool"], "unknown attack 'deepfool'"),
        (["--game", "Pongg"], "unknown game 'Pongg'"),
        (["--game", "Pong"], "trained on Assault, not Pong"),
        (["--eps", "0,-1"], "eps must be >= 0"),
        (["--eps", "0,one"], "--eps: 'one' is not a number"),
        (["--episodes", "0"], "episodes must be an integer >= 1"),
        (["--perturb", "all"], "invalid choice"),
        (["--device", "tpu"], "unknown device"),
        (["--time-limit", "0"], "--time-limit must be a positive number of minutes"),
        (["BROKEN"], "missing model.safetensors"),
        (["CONFIG"], "unknown config key 'defences'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    agent_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    out = tmp_path / "eval"
    agent = str(agent_dir)
    if flags == ["BROKEN"]:
        agent, flags = str(_broken_agent(tmp_path, agent_dir)), []
    if flags == ["CONFIG"]:
        config = tmp_path / "bad.yaml"
        config.write_text("defences: [dense]\n")
        flags = ["--config", str(config)]
    assert _exit_code(["evaluate", "--agent", agent, "--out", str(out), *SMALL, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def _exit_code(argv: list[str]) -> int:
    """``main``'s return code, or argparse's exit code for its own errors."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_no_agent_installed_says_how_to_train_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sap_rl.rl.agent_search as module

    monkeypatch.setattr(module, "_agent_roots", lambda: [tmp_path / "agents"])
    assert main(["evaluate", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sap-rl: error: no agent is installed")
    assert "sap-rl train --game Pong --out agents/pong-ddqn" in err and "\n" not in err
    assert not (tmp_path / "eval").exists()


def test_real_process_exit_code_and_stderr(agent_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sap_rl.cli", "evaluate", "--agent", str(agent_dir),
         "--defense", "sap-x", "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sap-rl: error: unknown defense 'sap-x'; valid defenses: dense, sap-<k> (e.g. sap-100, "
        "sap-50), sap-<k>-fast, dropout-<p>, noise-<sigma>"
    ]
    assert proc.stdout == ""


def test_gradient_masking_checks_are_stored_and_each_is_a_warning_line(
    agent_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # large_eps at 1 makes the eps 2 row subject to the large-budget check; whether this untrained
    # agent's row is flagged depends on its games: each stored flag must be one stderr line.
    config = tmp_path / "eval.yaml"
    config.write_text("large_eps: 1\n")
    out = tmp_path / "eval"
    assert main([*_dense_args(agent_dir, out), "--config", str(config)]) == 0
    err = capsys.readouterr().err
    meta = json.loads((out / "summary.json").read_text())
    assert meta["config"]["large_eps"] == 1.0 and isinstance(meta["checks"], list)
    assert err.count("sap-rl: warning: ") == len(meta["checks"])
    for check in meta["checks"]:
        assert check["kind"] == "large-budget" and check["reference"] == 0.0
        assert check["message"] in err
