"""The evaluator: matched games, exact clean play, batched == wrapper loop, outputs, resume.

Real ALE games with tiny settings: an untrained Nature-CNN agent on Assault (its score reacts to
perturbations), games capped at about 60-100 agent steps, 2-3 games per cell.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sap_rl.errors import UserError
from sap_rl.rl.agent import AgentCard, QNetwork, Score, save_agent
from sap_rl.rl.agent_search import default_agent, resolve_agent
from sap_rl.rl.envs import AtariPreprocessing, make_env
from sap_rl.rl.eval_config import AtariEvalConfig, Cell, plan_cells
from sap_rl.rl.evaluate import evaluate
from sap_rl.rl.evaluate_cells import EPISODE_COLUMNS
from sap_rl.rl.perturb import ObservationAttack
from sap_rl.rl.play import agent_policy, play_matched_games, play_wrapped, random_policy

GAME = "Assault"
N_ACTIONS = 7


def _envs(n: int, max_steps: int) -> list:
    pre = AtariPreprocessing(max_episode_frames=4 * max_steps)
    return [make_env(GAME, training=False, preprocessing=pre) for _ in range(n)]


def _play(net: torch.nn.Module, attack: str | None, eps: float, *, n_envs: int, games: int,
          max_steps: int, **kwargs: object) -> list[tuple[int, float, int]]:  # fmt: skip
    envs = _envs(n_envs, max_steps)
    attacker = ObservationAttack(net, attack, eps, **kwargs)  # type: ignore[arg-type]
    records = play_matched_games(envs, agent_policy(attacker), games, seed=0)
    for env in envs:
        env.close()
    return [(r.seed, r.reward, r.length) for r in records]


def _wrapped(net: torch.nn.Module, attack: str | None, eps: float, *, games: int,
             max_steps: int, **kwargs: object) -> list[tuple[int, float, int]]:  # fmt: skip
    records = play_wrapped(GAME, net, games, attack=attack, eps=eps, max_steps=max_steps,
                           **kwargs)  # type: ignore[arg-type]  # fmt: skip
    return [(r.seed, r.reward, r.length) for r in records]


# ----------------------------------------------------------------------------- matched play


def test_eps_zero_dense_reproduces_clean_play_exactly(net: QNetwork) -> None:
    """Same seeds, rewards and lengths: plain loop, evaluator at eps=0, forced attack path."""
    clean = _wrapped(net, None, 0.0, games=3, max_steps=70)
    assert [seed for seed, _, _ in clean] == [0, 1, 2]
    assert len({reward for _, reward, _ in clean} | {length for _, _, length in clean}) > 2
    assert _play(net, None, 0.0, n_envs=2, games=3, max_steps=70) == clean
    assert _play(net, "fgsm", 0.0, n_envs=2, games=3, max_steps=70) == clean
    forced = _play(net, "fgsm", 0.0, n_envs=2, games=3, max_steps=70, always_attack=True)
    assert forced == clean


@pytest.mark.parametrize(
    ("eps", "perturb"), [(2.0, "stack"), (0.5, "stack"), (8.0, "last")]
)  # fmt: skip
def test_batched_evaluator_equals_the_wrapper_loop(net: QNetwork, eps: float, perturb: str) -> None:
    """Integer eps: uint8 wrapper frames; fractional eps: float32 frames; both exact."""
    wrapped = _wrapped(net, "fgsm", eps, games=3, max_steps=70, perturb=perturb)
    batched = _play(net, "fgsm", eps, n_envs=2, games=3, max_steps=70, perturb=perturb)
    assert batched == wrapped
    if eps >= 2:
        assert batched != _wrapped(net, None, 0.0, games=3, max_steps=70)  # the attack matters


def test_which_env_slot_plays_a_game_does_not_matter(net: QNetwork) -> None:
    one = _play(net, "fgsm", 1.0, n_envs=1, games=3, max_steps=40)
    three = _play(net, "fgsm", 1.0, n_envs=3, games=3, max_steps=40)
    assert one == three


def test_exactly_the_first_n_games_are_collected() -> None:
    envs = _envs(3, 400)
    finished: list[int] = []
    games = play_matched_games(envs, random_policy(N_ACTIONS, seed=0), 4, seed=10,
                               on_game=lambda g: finished.append(g.episode))  # fmt: skip
    assert [g.episode for g in games] == [0, 1, 2, 3]
    assert [g.seed for g in games] == [10, 11, 12, 13]
    assert sorted(finished) == [0, 1, 2, 3]
    for env in envs:
        env.close()


# ----------------------------------------------------------------------------- configuration


def test_config_normalizes_names_and_always_adds_clean() -> None:
    cfg = AtariEvalConfig(defenses=["Dense", "sap-100", "dense"], attacks=["FGSM"], eps=[4, 1, 1])
    assert cfg.defenses == ["dense", "sap-100"] and cfg.attacks == ["fgsm"]
    assert cfg.eps == [0.0, 1.0, 4.0]
    names = [c.name for c in plan_cells(cfg)]
    assert names == ["dense__clean", "sap-100__clean", "dense__fgsm__1", "dense__fgsm__4",
                     "sap-100__fgsm__1", "sap-100__fgsm__4"]  # fmt: skip
    assert Cell("sap-50", "pgd-10-eot", 0.5).name == "sap-50__pgd-10-eot__0.5"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"defenses": ["sap"]}, "unknown defense"),
        ({"attacks": ["cw"]}, "unknown attack"),
        ({"eps": [1, -2]}, "eps must be >= 0"),
        ({"game": "Pongg"}, "unknown game"),
        ({"episodes": 0}, "episodes"),
        ({"perturb": "first"}, "perturb"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"defenses": []}, "no defense"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"attacks": ["pgd-1000000"]}, r"at most 1000 PGD steps \(pgd-1 to pgd-1000\)"),
        ({"eot_samples": 1001}, "eot-samples must be an integer from 1 to 1000, got 1001"),
    ],
)
def test_bad_config_is_a_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        AtariEvalConfig(**kwargs)


# ----------------------------------------------------------------------------- outputs, resume


def _config(agent: Path, **overrides: object) -> AtariEvalConfig:
    settings: dict = {"agent": str(agent), "defenses": ["dense", "sap-100"], "attacks": ["fgsm"],
                      "eps": [0, 2], "episodes": 2, "n_envs": 2, "max_steps": 40}  # fmt: skip
    settings.update(overrides)
    return AtariEvalConfig(**settings)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_outputs_resume_and_reproducibility(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate(_config(agent_dir), out, progress=False)
    assert (result.cells_played, result.cells_skipped) == (4, 0)
    for name in ("episodes.csv", "summary.csv", "summary.json", "relative_reward.png"):
        assert (out / name).is_file()

    episodes = _read(out / "episodes.csv")
    assert list(episodes[0]) == list(EPISODE_COLUMNS)
    assert len(episodes) == 4 * 2
    assert {(r["game"], r["agent"]) for r in episodes} == {(GAME, "assault-test")}
    assert [r["seed"] for r in episodes[:2]] == ["0", "1"]

    summary = _read(out / "summary.csv")
    assert [(r["defense"], r["attack"], float(r["eps"])) for r in summary] == [
        ("dense", "fgsm", 0.0), ("dense", "fgsm", 2.0),
        ("sap-100", "fgsm", 0.0), ("sap-100", "fgsm", 2.0),
    ]  # fmt: skip
    dense_clean, dense_attacked = summary[0], summary[1]
    assert float(dense_clean["relative"]) == 1.0 and float(dense_clean["normalized"]) == 1.0
    mean = float(dense_attacked["mean"])
    assert float(dense_attacked["relative"]) == pytest.approx(mean / float(dense_clean["mean"]))
    expected = (mean + 5.0) / (float(dense_clean["mean"]) + 5.0)  # card random score -5
    assert float(dense_attacked["normalized"]) == pytest.approx(expected)

    meta = json.loads((out / "summary.json").read_text())
    assert meta["config"]["episodes"] == 2 and meta["config"]["defenses"] == ["dense", "sap-100"]
    assert set(meta["versions"]) >= {"sap_rl", "torch", "gymnasium", "ale_py"}
    assert meta["random_score"] == {"value": -5.0, "source": "agent card"}
    assert meta["games"] == 8 and len(meta["summary"]) == 4

    # Rerun: every cell is reused, nothing changes.
    before = (out / "summary.csv").read_text()
    again = evaluate(_config(agent_dir), out, progress=False)
    assert (again.cells_played, again.cells_skipped) == (0, 4)
    assert (out / "summary.csv").read_text() == before

    # An interrupted run (a stochastic cell missing) redoes only that cell, reproducibly.
    (out / "cells" / "sap-100__fgsm__2.json").unlink()
    (out / "summary.csv").unlink()
    resumed = evaluate(_config(agent_dir), out, progress=False)
    assert (resumed.cells_played, resumed.cells_skipped) == (1, 3)
    assert (out / "summary.csv").read_text() == before

    # A bigger grid reuses the finished cells.
    bigger = evaluate(_config(agent_dir, eps=[0, 2, 4]), out, progress=False)
    assert (bigger.cells_played, bigger.cells_skipped) == (2, 4)


def test_settings_that_change_the_games_are_refused_for_an_existing_out(
    agent_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    evaluate(_config(agent_dir, defenses=["dense"], eps=[0]), out, progress=False)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for change in ({"episodes": 3}, {"seed": 1}, {"perturb": "last"}, {"max_steps": 70}):
        with pytest.raises(UserError, match="different evaluation"):
            evaluate(_config(agent_dir, defenses=["dense"], eps=[0], **change), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    (out / "run.json").unlink()  # the cells themselves remember their settings too
    with pytest.raises(UserError, match="played with other settings"):
        evaluate(_config(agent_dir, defenses=["dense"], eps=[0], episodes=3), out)
    evaluate(_config(agent_dir, defenses=["dense"], eps=[0], n_envs=1), out, progress=False)


def test_random_score_is_measured_once_and_cached(
    tmp_path: Path, net: QNetwork, monkeypatch: pytest.MonkeyPatch,
    save_assault_agent: Callable[..., Path],
) -> None:  # fmt: skip
    agent = save_assault_agent(tmp_path / "no-random", net, random_score=None)
    out = tmp_path / "eval"
    cfg = _config(agent, defenses=["dense"], eps=[0], random_episodes=2)
    evaluate(cfg, out, progress=False)
    cached = json.loads((out / "random_score.json").read_text())
    assert len(cached["games"]) == 2
    meta = json.loads((out / "summary.json").read_text())
    assert meta["random_score"]["value"] == cached["mean"]
    assert "uniform random policy" in meta["random_score"]["source"]

    import sap_rl.rl.evaluate as module

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("random policy measured twice")

    monkeypatch.setattr(module, "random_policy", fail)
    evaluate(cfg, out, progress=False)
    meta = json.loads((out / "summary.json").read_text())
    assert meta["random_score"]["source"] == "measured, cached in random_score.json"


def test_stochastic_defense_options_run(agent_dir: Path, tmp_path: Path) -> None:
    cfg = _config(agent_dir, defenses=["sap-100-fast"], attacks=["fgsm-eot"], eps=[1],
                  episodes=1, eot_samples=2, action_samples=2, epsilon=0.1)  # fmt: skip
    result = evaluate(cfg, tmp_path / "eval", progress=False)
    assert [(r.defense, r.attack, r.eps, r.n) for r in result.rows] == [
        ("sap-100-fast", "fgsm-eot", 0.0, 1), ("sap-100-fast", "fgsm-eot", 1.0, 1),
    ]  # fmt: skip
    assert result.meta["baseline"]["source"] == "agent card clean_score"


# ----------------------------------------------------------------------------- bad input


def test_bad_agents_fail_before_anything_is_written(
    agent_dir: Path, tmp_path: Path, net: QNetwork, save_assault_agent: Callable[..., Path]
) -> None:
    out = tmp_path / "eval"
    broken = save_assault_agent(tmp_path / "broken", net)
    (broken / "model.safetensors").unlink()
    cases = [
        (_config(broken), "missing model.safetensors"),
        (_config(tmp_path / "nowhere"), "agent not found"),
        (_config(agent_dir, game="Pong"), "trained on Assault, not Pong"),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError, match=message):
            evaluate(cfg, out)
        assert not out.exists()


def test_default_agent_is_the_best_shipped_one(tmp_path: Path, net: QNetwork) -> None:
    def agent(name: str, mean: float) -> Path:
        card = AgentCard(name=name, game=GAME, env_id=f"ALE/{GAME}-v5",
                         clean_score=Score(mean, 0.0, 10))  # fmt: skip
        save_agent(tmp_path / name, net, card)
        return tmp_path / name

    weak, strong = agent("a-weak", 300.0), agent("b-strong", 700.0)  # Assault: random 222.4
    broken = tmp_path / "c-broken"
    broken.mkdir()
    (broken / "card.json").write_text("{not json")
    assert default_agent([weak, strong, broken]) == strong
    assert default_agent([broken, weak]) == weak
    assert default_agent([broken]) == broken  # nothing ranks: the first; loading then says why
    assert default_agent([strong, agent("d-tie", 700.0)]) == strong


def test_agent_resolution(tmp_path: Path, agent_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sap_rl.rl.agent_search as module

    monkeypatch.setattr(module, "_agent_roots", lambda: [tmp_path / "agents"])
    with pytest.raises(UserError, match=r"no agent is installed.*sap-rl train --game"):
        resolve_agent(None)
    run = tmp_path / "agents" / "my-run"
    (run / "agent").mkdir(parents=True)
    for name in ("card.json", "model.safetensors"):
        (run / "agent" / name).write_bytes((agent_dir / name).read_bytes())
    assert resolve_agent(None) == run / "agent"
    assert resolve_agent("my-run") == run / "agent"
    assert resolve_agent(str(agent_dir)) == agent_dir


def test_time_limit_stops_between_cells_and_a_rerun_finishes(
    agent_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    nothing = evaluate(_config(agent_dir), out, progress=False, time_limit_s=1e-9)
    assert (nothing.cells_played, nothing.rows) == (0, [])
    assert len(nothing.cells_missing) == 4
    evaluate(_config(agent_dir, defenses=["dense"]), out, progress=False)
    partial = evaluate(_config(agent_dir), out, progress=False, time_limit_s=1e-9)
    assert (partial.cells_played, partial.cells_skipped) == (0, 2)
    assert partial.cells_missing == ["sap-100__clean", "sap-100__fgsm__2"]
    meta = json.loads((out / "summary.json").read_text())
    assert meta["cells_missing"] == partial.cells_missing
    assert {r["defense"] for r in _read(out / "summary.csv")} == {"dense"}
    rest = evaluate(_config(agent_dir), out, progress=False)
    assert (rest.cells_played, rest.cells_skipped, rest.cells_missing) == (2, 2, [])


def test_workers_play_exactly_the_games_of_one_process(agent_dir: Path, tmp_path: Path) -> None:
    # A stochastic defense and an EOT attack too: their draws are seeded per cell, not per process.
    cfg = {"attacks": ["fgsm", "fgsm-eot"], "eot_samples": 2}
    one = evaluate(_config(agent_dir, **cfg), tmp_path / "one", progress=False)
    two = evaluate(_config(agent_dir, workers=2, **cfg), tmp_path / "two", progress=False)
    assert (one.cells_played, two.cells_played) == (6, 6)
    for name in ("episodes.csv", "summary.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    _check_worst_rows(tmp_path / "one", ["fgsm", "fgsm-eot"])
    # The number of workers is not a setting of the games: the other folder's cells are reused.
    again = evaluate(_config(agent_dir, **cfg), tmp_path / "two", progress=False)
    assert (again.cells_played, again.cells_skipped) == (0, 6)


def _check_worst_rows(out: Path, attacks: list[str]) -> None:
    """The worst row of each (defense, eps) is the per-game minimum over the attack rows."""
    games: dict[tuple[str, str, float], dict[str, float]] = {}
    for r in _read(out / "episodes.csv"):
        games.setdefault((r["defense"], r["attack"], float(r["eps"])), {})[r["seed"]] = float(
            r["reward"]
        )
    summary = {(r["defense"], r["attack"], float(r["eps"])): r for r in _read(out / "summary.csv")}
    worst = [key for key in summary if key[1] == "worst"]
    assert {(d, e) for d, _, e in worst} == {(d, e) for d, _, e in games}
    for defense, _, eps in worst:
        seeds = games[(defense, attacks[0], eps)]
        minimum = [min(games[(defense, a, eps)][s] for a in attacks) for s in seeds]
        row = summary[(defense, "worst", eps)]
        assert float(row["mean"]) == pytest.approx(sum(minimum) / len(minimum))
        assert int(row["n"]) == len(minimum)
        if eps == 0:  # no attack runs at eps 0: the worst case is the clean games
            assert row["mean"] == summary[(defense, attacks[0], 0.0)]["mean"]
    # Each defense against dense, per (attack, eps) including worst, with a bootstrap CI.
    meta = json.loads((out / "summary.json").read_text())
    pairs = {(d["defense"], d["attack"], d["eps"]): d for d in meta["paired_differences"]}
    assert set(pairs) == {k for k in summary if k[0] != "dense"}
    for (defense, attack, eps), d in pairs.items():
        diff = float(summary[(defense, attack, eps)]["mean"]) - float(
            summary[("dense", attack, eps)]["mean"]
        )
        assert d["diff"] == pytest.approx(diff)
        assert d["ci_low"] <= d["diff"] + 1e-9 and d["diff"] <= d["ci_high"] + 1e-9


def test_workers_respect_the_time_limit(agent_dir: Path, tmp_path: Path) -> None:
    result = evaluate(_config(agent_dir, workers=2), tmp_path / "eval", progress=False,
                      time_limit_s=1e-9)  # fmt: skip
    assert (result.cells_played, len(result.cells_missing)) == (0, 4)


@pytest.mark.parametrize("name", ["krull-ddqn", "kungfumaster-ddqn", "roadrunner-ddqn"])
def test_committed_study_results_resume_with_the_shipped_agent(name: str) -> None:
    # Rerunning the README's study command on results/rl/<name> must reuse all 64 cells: the
    # fingerprint (agent name and weights checksum included) still matches the shipped card.
    from sap_rl.config import load_config
    from sap_rl.rl.agent import load_agent
    from sap_rl.rl.evaluate_cells import AtariCells, fingerprint
    from sap_rl.rl.games import resolve_game

    repo = Path(__file__).resolve().parents[2]
    config = load_config(AtariEvalConfig, repo / "configs/eval/study.yaml", {"agent": name})
    _, card = load_agent(repo / "agents" / name)
    stamp = fingerprint(card, resolve_game(card.game), config)
    out = repo / "results" / "rl" / name
    assert json.loads((out / "run.json").read_text())["fingerprint"] == stamp
    cells = plan_cells(config)
    assert len(cells) == 64
    files = AtariCells(out, stamp, cells, config.n_envs)
    assert all(files.load(cell.name) is not None for cell in cells)
    with (out / "episodes.csv").open() as handle:
        assert {row["agent"] for row in csv.DictReader(handle)} == {name}
