"""Training checkpoints: an exact round trip, and no code from any file that ``--resume`` reads."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sap_rl.cli import main
from sap_rl.errors import UserError
from sap_rl.rl.checkpoint import (
    CHECKPOINT_DIR,
    load_checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
)
from sap_rl.rl.dqn import DoubleDQN, FrameStackNStepReplayBuffer
from sap_rl.rl.envs import make_vec_env
from sap_rl.rl.replay import FrameReplayBuffer


def _model(seed: int = 0, **policy_kwargs: object) -> DoubleDQN:
    env = make_vec_env("Breakout", 1, seed=seed, training=True)
    return DoubleDQN("CnnPolicy", env, buffer_size=300, learning_starts=20, train_freq=2,
                     target_update_interval=30, replay_buffer_class=FrameReplayBuffer,
                     replay_buffer_kwargs={"n_steps": 3, "gamma": 0.99}, exploration_fraction=0.5,
                     device="cpu", seed=seed, policy_kwargs=policy_kwargs)  # fmt: skip


def test_a_checkpoint_from_before_fused_adam_resumes(tmp_path: Path) -> None:
    from sap_rl.rl.checkpoint import RunState

    before = _model(optimizer_kwargs={"foreach": True})  # Adam as sap-rl ran it until fused
    before.learn(60)
    save_checkpoint(before, tmp_path, RunState(), 1.0)
    state = load_checkpoint_state(tmp_path)
    assert state is not None
    now = _model(seed=1)
    restore_checkpoint(now, tmp_path, state)
    assert now.policy.optimizer.param_groups[0]["foreach"]  # the run keeps its own optimizer
    now.learn(20, reset_num_timesteps=False)
    assert now._n_updates > before._n_updates


def test_restore_gives_back_weights_optimizer_counters_and_replay(tmp_path: Path) -> None:
    from sap_rl.rl.checkpoint import RunState

    trained = _model()
    trained.learn(120)
    save_checkpoint(trained, tmp_path, RunState(evaluations=[{"timesteps": 60.0}]), 12.5)
    state = load_checkpoint_state(tmp_path)
    assert state is not None
    assert state.timesteps == 120
    assert state.wall_time_s == 12.5

    fresh = _model(seed=1)  # other initial weights: everything must come from the checkpoint
    restore_checkpoint(fresh, tmp_path, state)
    for (name, a), (_, b) in zip(
        trained.policy.state_dict().items(), fresh.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    saved, loaded = trained.policy.optimizer.state_dict(), fresh.policy.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    for name in ("num_timesteps", "_n_updates", "_n_calls", "_episode_num", "exploration_rate"):
        assert getattr(fresh, name) == getattr(trained, name), name
    assert fresh._n_updates > 0
    assert list(fresh.ep_info_buffer or []) == list(trained.ep_info_buffer or [])
    a, b = trained.replay_buffer, fresh.replay_buffer
    assert a is not None and b is not None
    assert (a.pos, a.full) == (b.pos, b.full)
    assert np.array_equal(np.asarray(a.observations), np.asarray(b.observations))
    assert np.array_equal(np.asarray(a.next_observations), np.asarray(b.next_observations))
    assert np.array_equal(a.actions, b.actions)
    # and the next update is the same, bitwise (fused Adam, channels-last weights)
    from stable_baselines3.common.logger import Logger

    for model in (trained, fresh):
        model.set_logger(Logger(folder=None, output_formats=[]))
        np.random.seed(0)  # noqa: NPY002 - SB3 buffers sample with the global generator
        model.train(1, 8)
    for (name, a_), (_, b_) in zip(
        trained.policy.state_dict().items(), fresh.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(a_, b_), name


def test_a_whole_stack_replay_file_resumes(run_copy: Path) -> None:
    # Runs started before FrameReplayBuffer saved whole stacks (observations, last_frames): the
    # same contents written in that layout must resume and continue training.
    from sap_rl.rl.train import load_run_config

    _, cfg = load_run_config(run_copy)
    env = make_vec_env("Breakout", cfg.n_envs, seed=0, training=True)
    args = (cfg.dqn.buffer_size, env.observation_space, env.action_space, "cpu", cfg.n_envs)
    new = FrameReplayBuffer(*args, n_steps=3, gamma=cfg.dqn.gamma)
    old = FrameStackNStepReplayBuffer(*args, n_steps=3, gamma=cfg.dqn.gamma)
    env.close()
    path = run_copy / CHECKPOINT_DIR / "replay.npz"
    new.load_npz(path)
    old.observations[:] = np.asarray(new.observations)
    old.next_observations.last_frames[:] = np.asarray(new.next_observations)[:, :, -1:]
    for name in ("actions", "rewards", "dones", "timeouts"):
        getattr(old, name)[:] = getattr(new, name)
    old.pos, old.full = new.pos, new.full
    old.save_npz(path)
    with np.load(path) as data:
        assert "observations" in data.files
    code = main(["train", "--resume", "--out", str(run_copy), "--timesteps", "340"])
    assert code == 0
    state = load_checkpoint_state(run_copy)
    assert state is not None and state.timesteps == 340
    with np.load(path) as data:  # saved again in the new layout
        assert "frames" in data.files


class _Payload:
    """A pickle that, once unpickled, creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _torch_save_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _npz_with_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        array = io.BytesIO()
        np.save(array, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
        archive.writestr("state.npy", array.getvalue())
    return buffer.getvalue()


def _sb3_zip(marker: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data", json.dumps({"lr_schedule": {":serialized:": "x"}}))
        archive.writestr("policy.pth", _torch_save_bytes(marker))
    return buffer.getvalue()


PAYLOADS = {
    "policy.safetensors": [_pickle_bytes, _torch_save_bytes],
    "optimizer.safetensors": [_pickle_bytes, _torch_save_bytes],
    "replay.npz": [_npz_with_pickle, _pickle_bytes],
}


@pytest.mark.parametrize(
    ("name", "make"),
    [(name, make) for name, makers in PAYLOADS.items() for make in makers],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_payload_in_a_checkpoint_file_never_runs(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, make: object
) -> None:
    marker = tmp_path / "pwned"
    assert callable(make)
    (run_copy / CHECKPOINT_DIR / name).write_bytes(make(marker))
    # An SB3 model.zip planted beside it is never even opened.
    (run_copy / CHECKPOINT_DIR / "model.zip").write_bytes(_sb3_zip(marker))
    card_before = (run_copy / "agent" / "card.json").read_bytes()
    code = main(["train", "--resume", "--out", str(run_copy), "--timesteps", "400"])
    err = capsys.readouterr().err
    assert code == 2
    assert not marker.exists(), "code in a checkpoint file ran"
    assert err.count("\n") == 1
    assert name in err
    assert (run_copy / "agent" / "card.json").read_bytes() == card_before


def test_payload_runs_when_unpickled_so_the_test_can_fail(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(_pickle_bytes(marker))  # the point of this check: the payload is live
    assert marker.exists()


@pytest.mark.parametrize("name", ["policy.safetensors", "optimizer.safetensors", "replay.npz"])
def test_truncated_checkpoint_file_is_a_one_line_error(
    run_copy: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = run_copy / CHECKPOINT_DIR / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = main(["train", "--resume", "--out", str(run_copy), "--timesteps", "400"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert name in err


def test_checkpoint_of_an_older_version_is_refused_not_loaded(run_copy: Path) -> None:
    folder = run_copy / CHECKPOINT_DIR
    state = json.loads((folder / "state.json").read_text())
    del state["format"]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="older sap-rl"):
        load_checkpoint_state(run_copy)


def test_state_that_is_not_an_object_is_a_one_line_error(run_copy: Path) -> None:
    (run_copy / CHECKPOINT_DIR / "state.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_checkpoint_state(run_copy)


def test_resume_through_the_installed_command(run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (run_copy / CHECKPOINT_DIR / "optimizer.safetensors").write_bytes(_torch_save_bytes(marker))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sap_rl.cli",
            "train",
            "--resume",
            "--out",
            str(run_copy),
            "--timesteps",
            "400",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("sap-rl: error: ")
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
