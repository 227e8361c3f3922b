"""Replay memory and sampling time: SB3's ``ReplayBuffer``, whole stacks, each frame once.

All three buffers are allocated at ``--buffer-size`` transitions and receive the same real ALE
transitions (``--fill`` vectorized steps of a seeded random policy, stored as SB3's off-policy
loop stores them, terminal observations included). Memory is the bytes of each buffer's arrays,
scaled to 100k transitions; sampling time is the median over ``--batches`` calls of
``sample(32)`` (indices, stacks, n-step returns and the copy to torch tensors), the three buffers
taking turns so that load from other processes hits them alike.

Usage::

    nice -n 10 python benchmarks/bench_replay.py --game Pong --n-steps 3

Target: at most 0.8 GB per 100k transitions at 84x84.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np


def build(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The three buffers, empty, and the env whose spaces they use."""
    from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer

    from sap_rl.rl.dqn import FrameStackNStepReplayBuffer, FrameStackReplayBuffer
    from sap_rl.rl.envs import make_vec_env
    from sap_rl.rl.replay import FrameReplayBuffer

    env = make_vec_env(args.game, args.n_envs, seed=args.seed, training=True)
    common = (args.buffer_size, env.observation_space, env.action_space, "cpu", args.n_envs)
    n_step = {"n_steps": args.n_steps, "gamma": 0.99}
    if args.n_steps > 1:
        sb3: Any = NStepReplayBuffer(*common, **n_step)
        whole: Any = FrameStackNStepReplayBuffer(*common, **n_step)
    else:
        sb3, whole = ReplayBuffer(*common), FrameStackReplayBuffer(*common)
    buffers = {
        "SB3 ReplayBuffer": sb3,
        "whole stacks (FrameStackReplayBuffer)": whole,
        "each frame once (FrameReplayBuffer)": FrameReplayBuffer(*common, **n_step),
    }
    return buffers, env


def nbytes(buffer: Any) -> int:
    """Bytes of the arrays a buffer holds (allocated size, filled or not)."""
    from sap_rl.rl.replay import FrameReplayBuffer

    if isinstance(buffer, FrameReplayBuffer):
        return buffer.nbytes
    nexts = buffer.next_observations
    frames = getattr(nexts, "last_frames", nexts)  # the whole-stack buffer's one new frame each
    arrays = (buffer.observations, frames, buffer.actions, buffer.rewards, buffer.dones,
              buffer.timeouts)  # fmt: skip
    return sum(int(a.nbytes) for a in arrays)


def fill(buffers: dict[str, Any], env: Any, steps: int, seed: int) -> None:
    """Add the same ``steps`` real transitions to every buffer."""
    rng = np.random.default_rng(seed)
    obs = np.asarray(env.reset())
    for _ in range(steps):
        actions = rng.integers(env.action_space.n, size=env.num_envs)
        stepped, rewards, dones, infos = env.step(actions)
        new_obs = np.asarray(stepped)
        next_obs = new_obs.copy()
        for i, done in enumerate(dones):
            if done:
                next_obs[i] = infos[i]["terminal_observation"]
        for buffer in buffers.values():
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs


def sample_times(buffers: dict[str, Any], batches: int, seed: int) -> dict[str, float]:
    """Median seconds of one ``sample(32)`` per buffer, the buffers taking turns."""
    times: dict[str, list[float]] = {name: [] for name in buffers}
    for i in range(batches):
        for name, buffer in buffers.items():
            np.random.seed(seed + i)  # noqa: NPY002 - SB3 buffers sample with the global generator
            start = time.perf_counter()
            buffer.sample(32)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--buffer-size", type=int, default=100_000, help="transitions")
    parser.add_argument("--fill", type=int, default=5_000, help="vectorized env steps added")
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--n-steps", type=int, default=1, help="n-step returns (1: plain)")
    parser.add_argument("--batches", type=int, default=500, help="timed sample(32) calls each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    buffers, env = build(args)
    started = time.perf_counter()
    fill(buffers, env, args.fill, args.seed)
    env.close()
    fill_s = time.perf_counter() - started
    times = sample_times(buffers, args.batches, args.seed)
    new = buffers["each frame once (FrameReplayBuffer)"]
    filled = new.size() * new.n_envs
    print(
        f"{args.game}, {args.fill} steps x {args.n_envs} envs of a random policy ({fill_s:.1f} s "
        f"to fill all three) into buffers of {args.buffer_size} transitions, "
        f"n_steps={args.n_steps}; sample(32): median of {args.batches}"
    )
    for name, buffer in buffers.items():
        per_100k = nbytes(buffer) * 100_000 / (buffer.buffer_size * buffer.n_envs)
        print(f"{name:38s} replay bytes per 100k transitions: {per_100k / 1e9:.3f} GB; "
              f"sample(32): {times[name] * 1e3:.3f} ms")  # fmt: skip
    queued = int(new.frame_counts.sum())
    print(f"FrameReplayBuffer frames queued per transition: {queued / max(filled, 1):.4f} "
          f"({queued - filled} episode-start frames over {filled} transitions)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
