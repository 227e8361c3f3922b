"""Pixels of ale-py's ``AtariVectorEnv`` against sap-rl's gymnasium/SB3 wrapper stack.

Both start from the same seed with no-op starts off and no episodic life, and take the same
seeded random actions; the bench counts the steps whose newest frame is identical and, where
frames differ, the share of differing pixels and the largest difference. It runs each game twice:
with fire reset (as training uses it) and without (on both sides), which isolates the fire reset.

Then it compares sap-rl's ``ale_vector`` backend (:mod:`sap_rl.rl.ale_vector`) with the whole
gymnasium stack as sap-rl plays it (fire reset and no-op starts on; evaluation envs: whole games,
presses after a lost life; training envs: episodic life, clipped rewards), game ``k`` reset with
seed ``seed + k``: whole observation stacks, rewards and episode ends per step, over several games
(or lives, for training).

With ``--throughput N``, it times the training envs (``make_vec_env(..., training=True)``, seeded
random actions, no network) of both backends at ``N`` envs, interleaved over rounds.

With ``--agent``, it plays the agent's card games (``sap-rl score``'s protocol: games
``evaluation.seed + g``, greedy) on each backend and prints the games' scores and lengths, their
mean and the wall time.

Usage::

    nice -n 10 python benchmarks/compare_ale_vector.py --games Pong,RoadRunner,Breakout
    nice -n 10 python benchmarks/compare_ale_vector.py --games "" --agent agents/roadrunner-ddqn \
        --episodes 10
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


def compare_backend(game: str, training: bool, steps: int, seed: int) -> str:
    """sap-rl's ``ale_vector`` backend against the gymnasium stack: stacks, rewards, ends."""
    from sap_rl.rl.ale_vector import AleGame
    from sap_rl.rl.envs import make_env

    env = make_env(game, training=training)
    ale = AleGame(game, training=training)
    rng = np.random.default_rng(seed)
    same_steps = episodes = final_only = 0
    k = 0
    ours, _ = env.reset(seed=seed)
    theirs, _ = ale.reset(seed=seed)
    equal, total = int(np.array_equal(ours, theirs)), 1
    while total < steps:
        action = int(rng.integers(env.action_space.n))
        ours, r_a, term_a, cut_a, _ = env.step(action)
        theirs, r_b, term_b, cut_b, _ = ale.step(action)
        total += 1
        same = np.array_equal(ours, theirs)
        equal += same
        same_steps += (float(r_a), term_a, cut_a) == (r_b, term_b, cut_b)
        if term_a or cut_a:
            final_only += not same
            episodes += 1
            k += 1
            # evaluation: game k on seed + k, as play_matched_games; training: the env goes on
            ours, _ = env.reset(seed=None if training else seed + k)
            theirs, _ = ale.reset(seed=None if training else seed + k)
            total += 1
            equal += np.array_equal(ours, theirs)
    env.close()
    ale.close()
    return (f"{game:12s} ale_vector backend, {'training' if training else 'evaluation'} envs: "
            f"stacks equal {equal}/{total}, (reward, terminated, truncated) equal "
            f"{same_steps}/{total - episodes - 1}, {episodes} episodes; unequal only at a game "
            f"over inside a frame skip: {final_only}")  # fmt: skip


def agent_scores(agent: str, episodes: int, n_envs: int) -> list[str]:
    """An agent's clean games on each backend, as ``sap-rl score`` plays them."""
    import dataclasses
    import time

    import torch

    from sap_rl.rl.agent import load_agent
    from sap_rl.rl.score import scoring_config
    from sap_rl.rl.scoring import agent_games, score_of

    torch.set_num_threads(1)
    q_net, card = load_agent(agent)
    lines, games = [], {}
    for backend in ("gymnasium", "ale_vector"):
        cfg = scoring_config(card, episodes=episodes, n_envs=n_envs)
        cfg.env = dataclasses.replace(cfg.env, backend=backend)
        start = time.perf_counter()
        games[backend] = agent_games(q_net, card.game, cfg, episodes=episodes)
        seconds = time.perf_counter() - start
        score = score_of(games[backend])
        lines.append(f"{card.name} {backend:10s} mean {score.mean:.1f} +- {score.std:.1f} over "
                     f"{score.episodes} games, {sum(g.length for g in games[backend])} steps in "
                     f"{seconds:.0f} s; games (score/length): "
                     + " ".join(f"{g.reward:g}/{g.length}" for g in games[backend]))  # fmt: skip
    same = sum(a == b for a, b in zip(games["gymnasium"], games["ale_vector"], strict=True))
    lines.append(f"{card.name}: {same}/{episodes} games identical (score, length, cap)")
    return lines


def env_throughput(game: str, n_envs: int, steps: int, rounds: int) -> str:
    """Agent steps per second of both backends' training ``VecEnv`` s (medians over rounds)."""
    import statistics
    import time

    from sap_rl.rl.envs import AtariPreprocessing, make_vec_env

    rates: dict[str, list[float]] = {"gymnasium": [], "ale_vector": []}
    for r in range(rounds):
        for backend in list(rates)[r % 2 :] + list(rates)[: r % 2]:
            preprocessing = AtariPreprocessing(backend=backend)
            env = make_vec_env(game, n_envs, seed=0, training=True, preprocessing=preprocessing)
            rng = np.random.default_rng(0)
            env.reset()
            start = time.perf_counter()
            for _ in range(steps // n_envs):
                env.step(rng.integers(env.action_space.n, size=n_envs))
            rates[backend].append(steps // n_envs * n_envs / (time.perf_counter() - start))
            env.close()
    gym, ale = (statistics.median(rates[b]) for b in rates)
    return (
        f"{game:12s} training envs, {n_envs} envs, random actions: gymnasium {gym:.0f} "
        f"steps/s, ale_vector {ale:.0f} steps/s ({ale / gym:.2f}x, {rounds} rounds)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default="Pong,RoadRunner,Breakout")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend-steps",
        type=int,
        default=3000,
        help="agent steps of the backend comparison, per game and env kind",
    )
    parser.add_argument(
        "--backend-only", action="store_true", help="only the ale_vector backend comparison"
    )
    parser.add_argument("--agent", help="agent folder whose clean games to play on each backend")
    parser.add_argument("--episodes", type=int, default=10, help="games of --agent")
    parser.add_argument("--n-envs", type=int, default=5, help="games of --agent played at once")
    parser.add_argument("--throughput", default="", help="env counts to time, e.g. 1,8")
    parser.add_argument("--throughput-steps", type=int, default=4000)
    args = parser.parse_args(argv)
    games = [g for g in args.games.split(",") if g]
    if not args.backend_only:
        for game in games:
            for fire_reset in (True, False):
                print(compare(game, fire_reset, args.steps, args.seed), flush=True)
    for game in games if args.backend_steps > 0 else []:
        for training in (False, True):
            print(compare_backend(game, training, args.backend_steps, args.seed), flush=True)
    for n_envs in [int(n) for n in args.throughput.split(",") if n]:
        for game in games:
            print(env_throughput(game, n_envs, args.throughput_steps, 3), flush=True)
    if args.agent:
        for line in agent_scores(args.agent, args.episodes, args.n_envs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
