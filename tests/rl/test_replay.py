"""FrameReplayBuffer: the same samples as the whole-stack buffers, at a fifth of the memory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from sap_rl.errors import UserError
from sap_rl.rl.dqn import FrameStackNStepReplayBuffer, FrameStackReplayBuffer
from sap_rl.rl.envs import AtariPreprocessing, make_vec_env
from sap_rl.rl.replay import FrameReplayBuffer

Step = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]
FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "discounts")


@functools.cache
def _steps(n_envs: int, steps: int) -> tuple[spaces.Space, spaces.Space, list[Step]]:
    """Real ALE transitions, stored as SB3's off-policy loop stores them (terminal observations).

    Breakout under random play loses a life every few dozen steps (an episode end), and a cap of
    400 frames (100 steps) on each game adds time-outs.
    """
    env = make_vec_env("Breakout", n_envs, seed=3, training=True,
                       preprocessing=AtariPreprocessing(max_episode_frames=400))  # fmt: skip
    rng = np.random.default_rng(0)
    obs = np.asarray(env.reset())
    out: list[Step] = []
    for _ in range(steps):
        actions = rng.integers(4, size=n_envs)
        stepped, rewards, dones, infos = env.step(actions)
        new_obs = np.asarray(stepped)
        next_obs = new_obs.copy()
        for i, done in enumerate(dones):
            if done:
                next_obs[i] = infos[i]["terminal_observation"]
        out.append((obs, next_obs, actions, rewards, dones, infos))
        obs = new_obs
    spaces_ = (env.observation_space, env.action_space)
    env.close()
    return (*spaces_, out)


def _filled(cls: type[ReplayBuffer], size: int, n_envs: int, steps: int, **kwargs: Any) -> Any:
    obs_space, action_space, transitions = _steps(n_envs, steps)
    buffer = cls(size, obs_space, action_space, device="cpu", n_envs=n_envs, **kwargs)
    for step in transitions:
        buffer.add(*step)
    return buffer


def _same_samples(a: ReplayBuffer, b: ReplayBuffer, seeds: int = 5, batch: int = 64) -> None:
    for seed in range(seeds):
        np.random.seed(seed)  # noqa: NPY002 - SB3 buffers sample with the global generator
        sa = a.sample(batch)
        np.random.seed(seed)  # noqa: NPY002
        sb = b.sample(batch)
        for field in FIELDS:
            x, y = getattr(sa, field), getattr(sb, field)
            assert (x is None) == (y is None), field
            assert x is None or torch.equal(x, y), (seed, field)


def test_the_recorded_games_have_episode_ends_time_outs_and_resets() -> None:
    _, _, steps = _steps(2, 300)
    dones = np.array([s[4] for s in steps])
    timeouts = np.array([[i.get("TimeLimit.truncated", False) for i in s[5]] for s in steps])
    assert dones.sum() >= 10
    assert timeouts.sum() >= 2
    first = steps[0][0][0]
    assert not first[:3].any() and first[3].any()  # a reset's stack: [0, 0, 0, f0]


@pytest.mark.parametrize(("n_steps", "n_envs"), [(1, 1), (1, 2), (3, 2), (5, 3)])
def test_samples_equal_the_whole_stack_buffers(n_steps: int, n_envs: int) -> None:
    # 300 steps into 100 slots per env: the ring wraps around three times.
    size = 100 * n_envs
    if n_steps == 1:
        old = _filled(FrameStackReplayBuffer, size, n_envs, 300)
        new = _filled(FrameReplayBuffer, size, n_envs, 300)
    else:
        kwargs = {"n_steps": n_steps, "gamma": 0.9}
        old = _filled(FrameStackNStepReplayBuffer, size, n_envs, 300, **kwargs)
        new = _filled(FrameReplayBuffer, size, n_envs, 300, **kwargs)
    assert new.full and (new.pos, new.full) == (old.pos, old.full)
    # Every stored stack, not only the sampled ones.
    assert np.array_equal(np.asarray(new.observations), old.observations)
    assert np.array_equal(np.asarray(new.next_observations), old.next_observations[:])
    _same_samples(old, new)


def test_a_partly_filled_buffer_samples_alike() -> None:
    old = _filled(FrameStackNStepReplayBuffer, 400, 2, 120, n_steps=3, gamma=0.99)
    new = _filled(FrameReplayBuffer, 400, 2, 120, n_steps=3, gamma=0.99)
    assert (new.pos, new.full) == (120, False)
    _same_samples(old, new)


def test_memory_is_one_frame_per_transition_plus_a_sixteenth() -> None:
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    new = FrameReplayBuffer(100_000, space, spaces.Discrete(18), device="cpu")
    assert new.nbytes < 0.8e9
    frame = 84 * 84
    assert new.frames.nbytes == (100_000 + 100_000 // 16 + 5) * frame


def test_short_episodes_grow_the_frame_ring_and_keep_every_stack() -> None:
    # Every transition starts an episode with 4 real frames: 5 frames each instead of 1.
    space = spaces.Box(0, 255, (4, 2, 2), np.uint8)
    buffer = FrameReplayBuffer(40, space, spaces.Discrete(2), device="cpu")
    rng = np.random.default_rng(0)
    stored = []
    for _ in range(100):
        obs = rng.integers(1, 255, (1, 4, 2, 2), dtype=np.uint8)
        nxt = np.concatenate([obs[:, 1:], rng.integers(0, 255, (1, 1, 2, 2), np.uint8)], axis=1)
        buffer.add(obs, nxt, np.zeros(1), np.zeros(1), np.ones(1), [{}])
        stored.append((obs[0], nxt[0]))
    assert len(buffer.frames) >= 5 * 40
    slots = np.arange(40)
    order = (slots - buffer.pos) % 40  # slot -> age rank among the last 40
    for slot, rank in zip(slots, order, strict=True):
        obs, nxt = stored[60 + rank]
        assert np.array_equal(buffer.stacks(np.array([slot]), np.array([0]))[0], obs)
        assert np.array_equal(buffer.stacks(np.array([slot]), np.array([0]), 1)[0], nxt)


def test_unshifted_stacks_are_refused() -> None:
    space = spaces.Box(0, 255, (4, 2, 2), np.uint8)
    buffer = FrameReplayBuffer(10, space, spaces.Discrete(2), device="cpu")
    obs = np.zeros((1, 4, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="shifted"):
        buffer.add(obs, np.full_like(obs, 7), np.zeros(1), np.zeros(1), np.zeros(1), [{}])


def test_save_load_roundtrip_is_compressed_and_exact(tmp_path: Path) -> None:
    a = _filled(FrameReplayBuffer, 200, 2, 300, n_steps=3, gamma=0.99)
    a.save_npz(tmp_path / "replay.npz")
    assert (tmp_path / "replay.npz").stat().st_size < a.frames.nbytes / 3
    b = _filled(FrameReplayBuffer, 200, 2, 20, n_steps=3, gamma=0.99)  # other contents
    b.load_npz(tmp_path / "replay.npz")
    _same_samples(a, b)
    b.add(*_steps(2, 300)[2][0])  # and it goes on: a reset's stack after the loaded ones
    small = FrameReplayBuffer(100, *_steps(2, 300)[:2], device="cpu", n_envs=2)
    with pytest.raises(UserError, match="does not match"):
        small.load_npz(tmp_path / "replay.npz")


def test_the_whole_stack_format_converts_on_load(tmp_path: Path) -> None:
    for steps in (300, 70):  # full (wrapped) and partly filled
        old = _filled(FrameStackNStepReplayBuffer, 200, 2, steps, n_steps=3, gamma=0.99)
        old.save_npz(tmp_path / "old.npz")
        new = FrameReplayBuffer(200, *_steps(2, 300)[:2], device="cpu", n_envs=2, n_steps=3)
        new.load_npz(tmp_path / "old.npz")
        assert (new.pos, new.full) == (old.pos, old.full)
        _same_samples(old, new)
        assert np.array_equal(np.asarray(new.observations)[: old.size()],
                              old.observations[: old.size()])  # fmt: skip


@pytest.mark.parametrize("damage", ["truncate", "flip", "indices", "garbage"])
def test_a_damaged_file_is_a_user_error(tmp_path: Path, damage: str) -> None:
    a = _filled(FrameReplayBuffer, 200, 2, 300, n_steps=3, gamma=0.99)
    path = tmp_path / "replay.npz"
    if damage == "indices":
        a.heads[5, 1] = a.frame_counts[1] + 3  # a frame that was never queued
    a.save_npz(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        for i in range(1000, len(data) // 2, 997):
            data[i] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a zip file")
    path.write_bytes(bytes(data))
    b = FrameReplayBuffer(200, *_steps(2, 300)[:2], device="cpu", n_envs=2, n_steps=3)
    with pytest.raises(UserError, match="unreadable replay buffer"):
        b.load_npz(path)
