"""Training throughput: SB3's ``DQN`` vs our ``DoubleDQN`` with identical settings.

Both algorithms train on the same real ALE game, with the same seed, replay buffer, hyper-
parameters and torch thread count, for the same number of environment steps after a warm-up that
fills the replay buffer past ``learning_starts``. Runs alternate (DQN, DDQN, DQN, DDQN, ...) so
that load from other processes hits both alike; the reported figure is the median over rounds.

Usage::

    nice -n 10 python benchmarks/bench_train.py --game Pong --steps 2000 --rounds 3

Target: DoubleDQN >= 0.9x DQN steps/second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def run_once(algo: str, args: argparse.Namespace) -> float:
    """Train one model for ``args.steps`` steps after warm-up; return env steps per second."""
    import torch
    from stable_baselines3 import DQN

    from sap_rl.rl.dqn import DoubleDQN, FrameStackReplayBuffer
    from sap_rl.rl.envs import make_vec_env

    torch.set_num_threads(args.threads)
    cls: Any = DQN if algo == "DQN" else DoubleDQN
    env = make_vec_env(args.game, args.n_envs, seed=args.seed, training=True)
    model = cls(
        "CnnPolicy",
        env,
        learning_rate=1e-4,
        buffer_size=args.buffer_size,
        learning_starts=args.learning_starts,
        batch_size=32,
        train_freq=args.train_freq,
        gradient_steps=1,
        target_update_interval=1000,
        exploration_fraction=0.1,
        exploration_final_eps=0.01,
        replay_buffer_class=FrameStackReplayBuffer,
        seed=args.seed,
        device="cpu",
    )
    model.learn(args.learning_starts + 100)  # warm-up: fill the buffer, first updates
    start_steps = model.num_timesteps
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    env.close()
    return (model.num_timesteps - start_steps) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-freq", type=int, default=4)
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="keep glibc's malloc defaults (sap-rl's commands keep freed memory)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.malloc_defaults:
        from sap_rl.memory import keep_freed_memory

        keep_freed_memory()  # as the sap-rl command line does

    rates: dict[str, list[float]] = {"DQN": [], "DDQN": []}
    for r in range(args.rounds):
        for algo in ("DQN", "DDQN"):
            rate = run_once(algo, args)
            rates[algo].append(rate)
            print(f"round {r + 1}/{args.rounds}  {algo:5s} {rate:8.1f} steps/s", flush=True)
    dqn = statistics.median(rates["DQN"])
    ddqn = statistics.median(rates["DDQN"])
    paired = [b / a for a, b in zip(rates["DQN"], rates["DDQN"], strict=True)]
    print(
        f"\n{args.game}, {args.steps} steps/run, train_freq={args.train_freq}, "
        f"n_envs={args.n_envs}, batch 32, torch threads={args.threads}, {args.rounds} rounds"
    )
    print(f"DQN        median {dqn:8.1f} steps/s")
    print(f"DoubleDQN  median {ddqn:8.1f} steps/s")
    ratio = ddqn / dqn
    verdict = "met" if ratio >= 0.9 else "NOT met"
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in paired)}")
    print(
        f"ratio DoubleDQN/DQN = {ratio:.3f} (medians; median of per-round ratios "
        f"{statistics.median(paired):.3f})  target >= 0.9: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
