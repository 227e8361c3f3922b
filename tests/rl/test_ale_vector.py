"""The ``ale_vector`` environment backend against the gymnasium wrapper stack, on real ALE games.

Both backends start from the same seeds and take the same seeded random actions; observations,
rewards, episode ends and whole-game records must agree (fire reset, no-op starts, episodic life
and the evaluation's presses after a lost life included). The one known difference is the last
observation of a game that ends inside a frame skip (never acted on), which is checked too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.rl.ale_vector import AleGame, _cpp_noop_draw, _gymnasium_rng, noop_count, rom_id
from sap_rl.rl.envs import AtariPreprocessing, make_env, make_vec_env
from sap_rl.rl.eval_config import AtariEvalConfig
from sap_rl.rl.play import make_eval_envs, play_matched_games, preprocessing_for, random_policy
from sap_rl.rl.train_config import TrainConfig

GAMES = ["Pong", "Breakout", "RoadRunner"]


@pytest.mark.parametrize("game", GAMES)
def test_evaluation_games_have_identical_pixels(game: str) -> None:
    gym_env = make_env(game, training=False)
    ale_env = AleGame(game, training=False)
    rng = np.random.default_rng(1)
    steps = 0
    try:
        for seed in (0, 7):
            ours, _ = gym_env.reset(seed=seed)
            theirs, _ = ale_env.reset(seed=seed)
            assert np.array_equal(ours, theirs), f"{game} seed {seed}: first observation"
            for _ in range(150):
                action = int(rng.integers(gym_env.action_space.n))
                a = gym_env.step(action)
                b = ale_env.step(action)
                steps += 1
                assert (float(a[1]), a[2], a[3]) == (b[1], b[2], b[3])
                done = a[2] or a[3]
                # a game over inside a frame skip leaves other stale frames in the max-pool
                if not done:
                    assert np.array_equal(a[0], b[0]), f"{game} seed {seed}: step {steps}"
                if done:
                    assert a[4]["episode"]["r"] == b[4]["episode"]["r"]
                    assert a[4]["episode"]["l"] == b[4]["episode"]["l"]
                    break
    finally:
        gym_env.close()
        ale_env.close()
    assert steps > 150


@pytest.mark.parametrize("game", ["Breakout", "RoadRunner"])
def test_training_envs_agree_with_episodic_life(game: str) -> None:
    # Breakout and RoadRunner lose lives within a few hundred random steps: episodic life ends
    # the episode, the next reset presses NOOP, FIRE, 2 and the game goes on.
    envs = [
        make_vec_env(game, 2, seed=3, training=True),
        make_vec_env(game, 2, seed=3, training=True,
                     preprocessing=AtariPreprocessing(backend="ale_vector")),
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    ends, lives_lost = 0, 0
    try:
        first = [venv.reset() for venv in envs]
        assert np.array_equal(first[0], first[1])
        for _ in range(300):
            actions = rng.integers(envs[0].action_space.n, size=2)  # type: ignore[attr-defined]
            (obs_a, rew_a, done_a, info_a), (obs_b, rew_b, done_b, info_b) = (
                venv.step(actions) for venv in envs
            )
            assert np.array_equal(rew_a, rew_b) and np.array_equal(done_a, done_b)
            assert set(np.unique(rew_a)) <= {-1.0, 0.0, 1.0}  # clipped
            assert np.array_equal(obs_a, obs_b)  # after a done: the next episode's first stack
            for i in np.flatnonzero(done_a):
                ends += 1
                game_over = "episode" in info_a[i]
                assert game_over == ("episode" in info_b[i])
                if game_over:
                    assert info_a[i]["episode"]["r"] == info_b[i]["episode"]["r"]
                    assert info_a[i]["episode"]["l"] == info_b[i]["episode"]["l"]
                else:
                    lives_lost += 1
                    terminal_a = info_a[i]["terminal_observation"]
                    assert np.array_equal(terminal_a, info_b[i]["terminal_observation"])
                assert info_a[i]["TimeLimit.truncated"] == info_b[i]["TimeLimit.truncated"]
    finally:
        for venv in envs:
            venv.close()
    assert lives_lost >= 1


def test_whole_games_score_the_same_on_both_backends() -> None:
    records = []
    for backend in ("gymnasium", "ale_vector"):
        envs = make_eval_envs("Breakout", 2, preprocessing_for(None, backend))  # type: ignore[arg-type]
        try:
            records.append(play_matched_games(envs, random_policy(4, seed=0), 3, seed=11))
        finally:
            for env in envs:
                env.close()
    assert records[0] == records[1]
    assert all(not g.truncated and g.length > 50 for g in records[0])


def test_capped_games_have_the_same_length() -> None:
    records = []
    for backend in ("gymnasium", "ale_vector"):
        envs = make_eval_envs("Pong", 1, preprocessing_for(60, backend))  # type: ignore[arg-type]
        try:
            records.append(play_matched_games(envs, random_policy(6, seed=0), 2, seed=5))
        finally:
            envs[0].close()
    assert [(g.length, g.truncated) for g in records[0]] == [(g.length, g.truncated)
                                                              for g in records[1]]  # fmt: skip
    assert all(g.truncated for g in records[1])


def test_noop_starts_follow_gymnasium_seeding() -> None:
    # The replica of gymnasium's generator draws the no-ops the wrapper stack plays (the ALE
    # counts them), and the C++ draw behind each vector-env seed is what the ALE then counts.
    env = make_env("Pong", training=False, preprocessing=AtariPreprocessing())
    try:
        for seed in (0, 1, 42):
            env.reset(seed=seed)
            frames = env.unwrapped.ale.getEpisodeFrameNumber()  # type: ignore[attr-defined]
            assert frames == noop_count(_gymnasium_rng(seed), 30) + 8  # + FIRE and 2, 4 each
    finally:
        env.close()
    from ale_py.vector_env import AtariVectorEnv

    vec = AtariVectorEnv(rom_id("Pong"), 1, noop_max=31, use_fire_reset=False, num_threads=1)
    try:
        for seed in range(5):
            _, info = vec.reset(seed=seed)
            assert int(info["episode_frame_number"][0]) == _cpp_noop_draw(seed, 31)
    finally:
        vec.close()


def test_unknown_backend_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"env\.backend': expected one of 'gymnasium', 'ale_v"):
        from_dict(TrainConfig, {"env": {"backend": "envpool"}})
    with pytest.raises(UserError, match="env-backend must be one of gymnasium, ale_vector"):
        AtariEvalConfig(env_backend="envpool")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"needs 'env\.backend: gymnasium'"):
        from_dict(TrainConfig, {"vec_env": "subproc", "env": {"backend": "ale_vector"}})


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--env-backend", "envpool"],
        ["train", "--game", "Pong", "--env-backend", "envpool"],
    ],
)
def test_unknown_backend_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from sap_rl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'envpool'" in err


def test_unknown_backend_in_a_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sap_rl.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text("env_backend: envpool\n")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'env_backend'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fingerprint_names_the_backend_only_off_the_default(tmp_path: Path) -> None:
    from sap_rl.rl.agent import AgentCard
    from sap_rl.rl.evaluate_cells import fingerprint
    from sap_rl.rl.games import resolve_game

    card = AgentCard(name="a", game="Pong", env_id="ALE/Pong-v5")
    game = resolve_game("Pong")
    assert "env_backend" not in fingerprint(card, game, AtariEvalConfig())
    stamp = fingerprint(card, game, AtariEvalConfig(env_backend="ale_vector"))
    assert stamp["env_backend"] == "ale_vector"


@pytest.mark.slow
def test_training_runs_and_resumes_on_ale_vector(tmp_path: Path, tiny_config_file: Path) -> None:
    import json

    from sap_rl.cli import main

    out = tmp_path / "run"
    base = ["train", "--game", "breakout", "--config", str(tiny_config_file), "--out", str(out)]
    assert main([*base, "--env-backend", "ale_vector"]) == 0
    card = json.loads((out / "agent" / "card.json").read_text())
    assert card["wrappers"]["backend"] == "ale_vector" and card["timesteps"] == 300
    resume = ["train", "--out", str(out), "--resume", "--timesteps", "400", "--no-progress"]
    assert main(resume) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == 400
    assert json.loads((out / "agent" / "card.json").read_text())["timesteps"] == 400


@pytest.mark.slow
def test_training_is_bit_identical_on_both_backends(tmp_path: Path, tiny_config_file: Path) -> None:
    # Same seeds, same games, same no-op starts: the replay buffer and the weights match exactly.
    import yaml

    from sap_rl.rl.train import train
    from sap_rl.rl.train_config import resolve_train_config

    data = yaml.safe_load(tiny_config_file.read_text())
    results = {}
    for backend in ("gymnasium", "ale_vector"):
        overrides = {"n_envs": 2, "env": {"backend": backend}}
        cfg = resolve_train_config(data, game="Breakout", overrides=overrides)
        results[backend] = train("Breakout", cfg, out=tmp_path / backend)
    paths = [r.agent_dir / "model.safetensors" for r in results.values()]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    replays = [np.load(r.out / "checkpoint" / "replay.npz") for r in results.values()]
    assert all(np.array_equal(replays[0][k], replays[1][k]) for k in replays[0].files)
    scores = [r.card.clean_score for r in results.values()]
    assert scores[0] == scores[1]
