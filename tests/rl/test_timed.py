"""Timed attacks, attacked fraction and action-change rate, and bad settings through the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from sap_rl.cli import main
from sap_rl.errors import UserError
from sap_rl.rl.agent import QNetwork
from sap_rl.rl.envs import obs_to_tensor
from sap_rl.rl.eval_config import AtariEvalConfig
from sap_rl.rl.evaluate import evaluate
from sap_rl.rl.perturb import ObservationAttack
from sap_rl.rl.play import make_eval_envs, play_matched_games, preprocessing_for

GAME = "Assault"


def _preference(net: QNetwork, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        probs = torch.softmax(net(x).double(), dim=1)
    return probs.max(dim=1).values - probs.min(dim=1).values


def _play(attack: ObservationAttack, net: QNetwork) -> list[tuple[float, bool]]:
    """(preference, attacked) of every step of 2 short real games."""
    steps: list[tuple[float, bool]] = []

    def policy(obs: np.ndarray, games: Sequence[int]) -> np.ndarray:
        x = obs_to_tensor(obs)
        actions, seen = attack.act(x, games)
        for row, p in enumerate(_preference(net, x).tolist()):
            steps.append((p, not torch.equal(seen[row], x[row])))
        return actions.numpy()

    envs = make_eval_envs(GAME, 2, preprocessing_for(25))
    try:
        play_matched_games(envs, policy, 2, seed=0)
    finally:
        for env in envs:
            env.close()
    return steps


def test_timed_attack_attacks_exactly_the_steps_above_the_threshold(net: QNetwork) -> None:
    clean = _play(ObservationAttack(net, "fgsm", 4.0, always_attack=False), net)
    threshold = float(np.median([p for p, _ in clean]))
    attack = ObservationAttack(net, "timed-fgsm", 4.0, timed_threshold=threshold, record=True)
    steps = _play(attack, net)
    above = [p > threshold for p, _ in steps]
    assert any(above) and not all(above)
    assert [hit for _, hit in steps] == above
    assert sum(c.attacked for c in attack.counts.values()) == sum(above)
    assert sum(c.steps for c in attack.counts.values()) == len(steps)


def test_timed_budget_caps_the_attacked_fraction(net: QNetwork) -> None:
    attack = ObservationAttack(net, "timed-fgsm", 4.0, timed_budget=0.25, record=True)
    _play(attack, net)
    for count in attack.counts.values():
        assert 0 < count.attacked <= 0.25 * count.steps
        assert count.changed <= count.steps


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timed_budget": 0}, "timed-budget must be in (0, 1]"),
        ({"timed_budget": 1.5}, "timed-budget must be in (0, 1]"),
        ({"timed_threshold": -0.1}, "timed-threshold must be a finite number >= 0"),
        ({"eot_samples": 0}, "eot-samples must be an integer"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        AtariEvalConfig(**settings)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("yaml", "flags", "message"),
    [
        ("timed_budget: 1.5\n", [], "timed-budget must be in (0, 1]"),
        ("timed_budget: 0\n", [], "timed-budget must be in (0, 1]"),
        ("timed_threshold: -1\n", [], "timed-threshold must be a finite number >= 0"),
        ("", ["--eot-samples", "0"], "eot-samples must be an integer"),
        ("", ["--attack", "timed-foo"], "unknown attack 'timed-foo'"),
        ("", ["--attack", "transfer-pgd"], "unknown attack 'transfer-pgd'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    agent_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str,
    flags: list[str], message: str,
) -> None:  # fmt: skip
    agent = agent_dir
    config = tmp_path / "eval.yaml"
    config.write_text(yaml or "seed: 0\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--agent", str(agent), "--config", str(config), "--out", str(out), *flags]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_records_attacked_fraction_and_action_change(
    agent_dir: Path, tmp_path: Path
) -> None:
    agent = agent_dir
    config = AtariEvalConfig(
        agent=str(agent), defenses=["dense"], attacks=["fgsm", "timed-fgsm"], eps=[8],
        episodes=2, n_envs=2, max_steps=20, timed_budget=0.5,
    )  # fmt: skip
    out = tmp_path / "out"
    evaluate(config, out, progress=False)
    timed = json.loads((out / "cells" / "dense__timed-fgsm__8.json").read_text())
    plain = json.loads((out / "cells" / "dense__fgsm__8.json").read_text())
    assert 0 < timed["attacked_fraction"] <= 0.5 and plain["attacked_fraction"] == 1.0
    assert 0 <= plain["action_change_rate"] <= 1
    for game in timed["games"]:
        assert game["attacked_steps"] <= 0.5 * game["policy_steps"] <= 0.5 * game["length"]
    assert "attacked_fraction" not in json.loads((out / "cells" / "dense__clean.json").read_text())
    rates = json.loads((out / "summary.json").read_text())["steps_under_attack"]
    assert rates["dense__timed-fgsm__8"]["attacked_fraction"] == timed["attacked_fraction"]
    assert json.loads((out / "run.json").read_text())["fingerprint"]["timed_budget"] == 0.5
