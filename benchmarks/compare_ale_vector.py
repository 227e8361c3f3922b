"""Pixels of ale-py's ``AtariVectorEnv`` against sap-rl's gymnasium/SB3 wrapper stack.

Both start from the same seed with no-op starts off and no episodic life, and take the same
seeded random actions; the bench counts the steps whose newest frame is identical and, where
frames differ, the share of differing pixels and the largest difference. It runs each game twice:
with fire reset (as training uses it) and without (on both sides), which isolates the fire reset.

Usage::

    nice -n 10 python benchmarks/compare_ale_vector.py --games Pong,RoadRunner,Breakout
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def wrapper_env(game: str, fire_reset: bool) -> Any:
    """sap-rl's training stack without no-op starts, episodic life and reward clipping."""
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import FireResetEnv, MaxAndSkipEnv

    from sap_rl.rl.envs import MAX_EPISODE_FRAMES, Resize, _raw_env, needs_fire_reset
    from sap_rl.rl.games import resolve_game

    resolved = resolve_game(game)
    env: gym.Env = MaxAndSkipEnv(_raw_env(resolved, MAX_EPISODE_FRAMES), skip=4)
    if fire_reset and needs_fire_reset(resolved):
        env = FireResetEnv(env)
    return gym.wrappers.FrameStackObservation(Resize(env, 84), 4, padding_type="zero")


def rom_name(game: str) -> str:
    """``RoadRunner`` -> ``road_runner`` (ale-py's ROM names)."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(game))


def compare(game: str, fire_reset: bool, steps: int, seed: int) -> str:
    from ale_py.vector_env import AtariVectorEnv

    vec = AtariVectorEnv(rom_name(game), 1, noop_max=0, episodic_life=False,
                         reward_clipping=False, use_fire_reset=fire_reset,
                         num_threads=1)  # fmt: skip
    env = wrapper_env(game, fire_reset)
    ours, _ = env.reset(seed=seed)
    theirs, _ = vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    equal, shares, largest, first = 0, [], 0, None
    for t in range(steps + 1):
        a, b = ours[-1].astype(np.int16), theirs[0, -1].astype(np.int16)
        if np.array_equal(a, b):
            equal += 1
        else:
            first = t if first is None else first
            shares.append(float((a != b).mean()))
            largest = max(largest, int(np.abs(a - b).max()))
        if t == steps:
            break
        action = int(rng.integers(env.action_space.n))
        ours, _, done_a, cut_a, _ = env.step(action)
        theirs, _, done_b, cut_b, _ = vec.step(np.array([action]))
        if done_a or cut_a or done_b[0] or cut_b[0]:
            break
    env.close()
    vec.close()
    share = np.mean(shares) if shares else 0.0
    return (f"{game:12s} fire reset {'on ' if fire_reset else 'off'}  newest frames equal "
            f"{equal}/{t + 1}, first difference at step {first}, differing pixels "
            f"{share:.4f} of a frame, largest difference {largest}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default="Pong,RoadRunner,Breakout")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for game in args.games.split(","):
        for fire_reset in (True, False):
            print(compare(game, fire_reset, args.steps, args.seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
