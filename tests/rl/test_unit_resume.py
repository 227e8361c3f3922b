"""Checkpoints inside a unit: a unit continued from any saved step plays the same games.

Real ALE games (Assault, an untrained agent whose actions react to the attack), games capped at
about 30-60 agent steps; states go through JSON as they do through the checkpoint file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sap_rl.grid.store import load_partial, save_partial
from sap_rl.rl.agent import QNetwork
from sap_rl.rl.eval_config import AtariEvalConfig, Cell
from sap_rl.rl.evaluate_cells import GamePlayer, make_envs, play_unit, units_of
from sap_rl.rl.games import resolve_game
from sap_rl.rl.perturb import StepCounts
from sap_rl.rl.play import PlayState, make_eval_envs, play_matched_games, preprocessing_for
from sap_rl.rl.unit_resume import ResumeError, decode_play_state, encode_play_state

GAME = "Assault"


def _play(
    net: QNetwork, config: AtariEvalConfig, cell: Cell, *, resume: Any = None, envs: Any = None
) -> tuple[list[dict[str, Any]], dict[int, StepCounts], list[dict[str, Any]]]:
    """The unit's games, counts and every state saved (after every step, through JSON)."""
    unit = units_of(config, [cell])[cell.name][0]
    envs = envs or make_envs(resolve_game(GAME), config)
    counts: dict[int, StepCounts] = {}
    saved: list[dict[str, Any]] = []

    def save(state: dict[str, Any]) -> None:
        saved.append(json.loads(json.dumps(state)))

    games = play_unit(net, cell, unit, config, envs, torch.device("cpu"), counts=counts,
                      resume=resume, save=save)  # fmt: skip
    return [asdict(g) for g in games], counts, saved


@pytest.mark.parametrize(
    ("defense", "attack", "perturb", "epsilon"),
    [
        ("dense", "pgd-10", "stack", 0.0),  # the literature's cells: PGD random starts
        ("sap-100", "pgd-10-eot", "online", 0.2),  # defense draws, remembered frames, exploration
        ("dropout-0.3", "timed-fgsm", "last", 0.0),  # per-game counts steer the attack
    ],
)
def test_a_unit_continued_from_any_step_plays_the_same_games(
    net: QNetwork, defense: str, attack: str, perturb: str, epsilon: float
) -> None:
    config = AtariEvalConfig(defenses=[defense], attacks=[attack], eps=[2.0], episodes=3,
                             n_envs=3, max_steps=40, eot_samples=2,
                             perturb=perturb,  # type: ignore[arg-type]
                             epsilon=epsilon, timed_threshold=0.001, timed_budget=0.5,
                             checkpoint_every=1e-9)  # fmt: skip
    cell = Cell(defense, attack, 2.0)
    games, counts, saved = _play(net, config, cell)
    assert len(saved) == max(c.steps for c in counts.values())  # one state per policy step
    assert any(c.changed for c in counts.values())  # the attack does change actions
    envs = make_envs(resolve_game(GAME), config)  # dirty envs: reused from one resume to the next
    for step in (0, len(saved) // 2, len(saved) - 2):
        again, again_counts, later = _play(net, config, cell, resume=saved[step], envs=envs)
        assert again == games, step
        assert again_counts == counts, step
        assert later == saved[step + 1 :], step  # the same states from there on


def test_a_stop_saves_the_unit_at_the_end_of_its_step(net: QNetwork) -> None:
    # No checkpoint is due (one an hour): the only state saved is the one the stop asks for.
    config = AtariEvalConfig(defenses=["sap-100"], attacks=["pgd-10-eot"], eps=[2.0], episodes=3,
                             n_envs=2, max_steps=40, eot_samples=2,
                             checkpoint_every=3600.0)  # fmt: skip
    cell = Cell("sap-100", "pgd-10-eot", 2.0)
    games, counts, _ = _play(net, config, cell)
    unit = units_of(config, [cell])[cell.name][0]
    saved: list[dict[str, Any]] = []

    def stop(game: Any) -> None:  # a scheduler's SIGTERM while the unit's second game runs
        os.kill(os.getpid(), signal.SIGTERM)

    def caller(signum: int, frame: Any) -> None:  # not reached while the unit plays
        raise RuntimeError("SIGTERM interrupted the unit mid-step")

    before = signal.signal(signal.SIGTERM, caller)
    try:
        with pytest.raises(KeyboardInterrupt, match="state is saved"):
            play_unit(net, cell, unit, config, make_envs(resolve_game(GAME), config),
                      torch.device("cpu"), on_game=stop, counts={},
                      save=lambda state: saved.append(json.loads(json.dumps(state))))  # fmt: skip
        assert signal.getsignal(signal.SIGTERM) is caller  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert len(saved) == 1 and saved[0]["play"]["actions"]  # saved mid-game, once
    again, again_counts, _ = _play(net, config, cell, resume=saved[0])
    assert again == games and again_counts == counts  # and it continues to the same games


def test_play_matched_games_resumes_with_slots_reused_and_idle() -> None:
    # 3 games on 2 envs: game 2 starts when a slot frees, the other slot then idles
    envs = make_eval_envs("Pong", 2, preprocessing_for(12))

    def policy(obs: np.ndarray, games: Any) -> np.ndarray:
        return np.asarray(obs.reshape(len(games), -1).sum(axis=1) % 6)  # depends on frames only

    states: list[PlayState] = []

    def keep(state: PlayState) -> None:
        states.append(decode_play_state(encode_play_state(state), 2, 0, 3))

    games = play_matched_games(envs, policy, 3, seed=7, on_step=keep)
    late = next(s for s in states if s.playing.count(None) == 1 and s.actions.get(2))
    again = play_matched_games(envs, policy, 3, seed=7, resume=late)
    assert again == games
    # A replay that reaches other frames (here: one action changed) is refused, not continued.
    early = next(s for s in states if len(s.actions.get(0, [])) == 5)
    early.actions[0][2] = (early.actions[0][2] + 1) % 6
    with pytest.raises(ResumeError, match="other frames"):
        play_matched_games(envs, policy, 3, seed=7, resume=early)
    early.actions[0][2] = 35  # a damaged file: Pong has 6 actions
    with pytest.raises(ResumeError, match="actions this env does not have"):
        play_matched_games(envs, policy, 3, seed=7, resume=early)


def test_a_state_of_other_games_is_refused(net: QNetwork) -> None:
    config = AtariEvalConfig(defenses=["dense"], attacks=["fgsm"], eps=[2.0], episodes=2,
                             n_envs=2, max_steps=10, checkpoint_every=1e-9)  # fmt: skip
    cell = Cell("dense", "fgsm", 2.0)
    _, _, saved = _play(net, config, cell)
    other = AtariEvalConfig(defenses=["dense"], attacks=["fgsm"], eps=[2.0], episodes=4,
                            n_envs=4, max_steps=10)  # fmt: skip
    with pytest.raises(ResumeError, match="not a state of these games"):
        _play(net, other, cell, resume=saved[3])
    sap = Cell("sap-100", "fgsm", 2.0)
    with pytest.raises(ResumeError, match="not a random state"):
        _play(net, config, sap, resume={"play": saved[3]["play"], "random": {"torch": "x"}})
    with pytest.raises(ResumeError, match="not a saved state"):
        _play(net, config, cell, resume={"games": []})


def test_a_player_continues_from_its_checkpoint_file(net: QNetwork, tmp_path: Path) -> None:
    config = AtariEvalConfig(defenses=["sap-100"], attacks=["fgsm"], eps=[2.0], episodes=2,
                             n_envs=2, max_steps=20, checkpoint_every=1e-9)  # fmt: skip
    cell = Cell("sap-100", "fgsm", 2.0)
    games, _, saved = _play(net, config, cell)
    unit = units_of(config, [cell])[cell.name][0]
    state = {k: v.detach() for k, v in net.state_dict().items()}
    player = GamePlayer(state, GAME, config, str(tmp_path), {"seed": 0})
    # A checkpoint after step 6, and one that resumes every game of the unit already finished.
    for step in (5, len(saved) - 1):
        save_partial(tmp_path, unit, saved[step] | {"device": "cpu"}, {"seed": 0}, 9.0)
        reported: list[int] = []
        result = player(unit, reported.append)
        assert [{k: g[k] for k in games[0]} for g in result] == games
        assert sum(reported) == len(games)
        kept = load_partial(tmp_path, unit, {"seed": 0})
        assert kept is not None and kept[1] >= 9.0  # later checkpoints add this run's seconds
    # A damaged checkpoint, or one this emulator replays to other frames: the unit is played
    # afresh, to the same games.
    tampered = json.loads(json.dumps(saved[5]))
    tampered["play"]["digests"]["0"] = "0" * 16
    bad_states: list[dict[str, Any]] = [{"play": {}, "random": {}}, tampered]
    for bad in bad_states:
        save_partial(tmp_path, unit, bad | {"device": "cpu"}, {"seed": 0}, 9.0)
        result = player(unit, lambda _: None)
        assert [{k: g[k] for k in games[0]} for g in result] == games
    player.close()


@pytest.mark.slow
def test_a_killed_evaluate_continues_inside_its_unit(agent_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sap_rl.cli", "evaluate", "--agent", str(agent_dir),
               "--defense", "sap-100", "--attack", "pgd-10-eot", "--eps", "2", "--episodes", "2",
               "--n-envs", "2", "--max-steps", "150", "--eot-samples", "4", "--quiet",
               "--threads", "1", "--checkpoint-every", "0.5"]  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run([*command, "--out", str(whole)], check=True, capture_output=True)
    cut = tmp_path / "cut"
    partial = cut / "cells" / "sap-100__pgd-10-eot__2.units" / "0.partial.json"
    process = subprocess.Popen([*command, "--out", str(cut)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not partial.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.is_file(), "no checkpoint was written"
        time.sleep(0.6)  # a later checkpoint, mid-game
        process.send_signal(signal.SIGTERM)  # a scheduler's stop: ends as Ctrl-C does
    finally:
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; finished results are kept" in stderr
    state = json.loads(partial.read_text())
    assert state["seconds"] > 0 and state["state"]["play"]["actions"]  # stopped mid-game
    subprocess.run([*command, "--out", str(cut)], check=True, capture_output=True)
    name = "cells/sap-100__pgd-10-eot__2.json"
    assert (cut / name).read_bytes() == (whole / name).read_bytes()
    assert not partial.parent.exists()  # the cell is written, its units and checkpoints gone
    timings = json.loads((cut / "timings.json").read_text())["cells"]
    assert timings["sap-100__pgd-10-eot__2"] >= state["seconds"]


@pytest.mark.slow
def test_a_stopped_evaluate_saves_each_running_unit(agent_dir: Path, tmp_path: Path) -> None:
    # Two workers, and no checkpoint due (one an hour): only the stop can write the checkpoints.
    command = [sys.executable, "-m", "sap_rl.cli", "evaluate", "--agent", str(agent_dir),
               "--defense", "sap-100", "--attack", "pgd-10-eot", "--eps", "2", "--episodes", "4",
               "--n-envs", "2", "--max-steps", "60", "--eot-samples", "2", "--quiet",
               "--threads", "1", "--workers", "2", "--checkpoint-every", "3600"]  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run([*command, "--out", str(whole)], check=True, capture_output=True)
    cut = tmp_path / "cut"
    units = cut / "cells" / "sap-100__pgd-10-eot__2.units"
    process = subprocess.Popen([*command, "--out", str(cut)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # The clean cell's file: both workers have just started the attacked cell's two units.
        clean = cut / "cells" / "sap-100__clean.json"
        deadline = time.monotonic() + 300
        while not clean.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clean.is_file(), "the clean cell was not written"
        time.sleep(1.0)  # a few attacked steps into their first games
        process.send_signal(signal.SIGTERM)
    finally:
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    states = [json.loads((units / f"{i}.partial.json").read_text()) for i in range(2)]
    assert all(s["state"]["play"]["actions"] for s in states)  # each saved mid-game on the stop
    status = subprocess.run([sys.executable, "-m", "sap_rl.cli", "status", str(cut)],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "no run writes it now" in status and "finished: 1 cell (sap-100__clean)" in status
    assert "sap-100__pgd-10-eot__2: 0 of 2 units finished" in status
    assert status.count(" of 2 games finished") == 2  # the two checkpoints
    subprocess.run([*command, "--out", str(cut)], check=True, capture_output=True)
    name = "cells/sap-100__pgd-10-eot__2.json"
    assert (cut / name).read_bytes() == (whole / name).read_bytes()
