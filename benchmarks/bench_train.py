"""Training throughput: SB3's ``DQN`` vs our ``DoubleDQN`` with identical settings.

Both algorithms train on the same real ALE game, with the same seed, replay buffer, hyper-
parameters and torch thread count. Both models are built and warmed up (buffer filled past
``learning_starts``) in one process, then trained in alternating chunks of ``--steps`` env steps
(DQN, DDQN, DDQN, DQN, DQN, ...), so load from other processes hits both alike within seconds.
The ratio is total DDQN steps/s over total DQN steps/s; the per-round ratios show the spread.

Afterwards it times, interleaved, one gradient update (``train(1, 32)``) of each model and one
no-gradient batch-32 forward pass of the Q-network, the extra work Double DQN cannot avoid, and
prints the ratio a DoubleDQN would reach if that forward pass were its only difference:
``cycle / (cycle + forward)``, with ``cycle`` DQN's seconds per ``train_freq`` env steps.

Usage::

    nice -n 10 python benchmarks/bench_train.py --game Pong --steps 500 --rounds 12

Target: DoubleDQN >= 0.9x DQN steps/second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def build(algo: str, args: argparse.Namespace) -> Any:
    """A DQN or DoubleDQN model on a fresh env, warmed up past ``learning_starts``."""
    from stable_baselines3 import DQN

    from sap_rl.rl.dqn import DoubleDQN, FrameStackReplayBuffer
    from sap_rl.rl.envs import make_vec_env

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
    return model


def timed_chunk(model: Any, steps: int) -> tuple[int, float]:
    """Train ``steps`` more env steps; return (steps done, seconds)."""
    start_steps = model.num_timesteps
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return model.num_timesteps - start_steps, time.perf_counter() - start


def update_costs(models: dict[str, Any], reps: int) -> dict[str, float]:
    """Median seconds of one update of each model and of one no-grad batch-32 forward pass."""
    import torch

    q_net = models["DDQN"].q_net
    obs = models["DDQN"].replay_buffer.sample(32).next_observations  # uint8, as in train()

    def forward() -> None:
        with torch.no_grad():
            q_net(obs)

    jobs = {"DQN": lambda: models["DQN"].train(1, 32),
            "DDQN": lambda: models["DDQN"].train(1, 32), "forward": forward}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(reps):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=500, help="env steps per chunk")
    parser.add_argument("--rounds", type=int, default=12, help="chunks per algorithm")
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
    parser.add_argument("--update-reps", type=int, default=40, help="timed updates per model")
    args = parser.parse_args(argv)
    if not args.malloc_defaults:
        from sap_rl.memory import keep_freed_memory

        keep_freed_memory()  # as the sap-rl command line does

    import torch

    torch.set_num_threads(args.threads)
    models = {algo: build(algo, args) for algo in ("DQN", "DDQN")}
    steps = {algo: 0 for algo in models}
    seconds = {algo: 0.0 for algo in models}
    rates: dict[str, list[float]] = {algo: [] for algo in models}
    for r in range(args.rounds):
        order = ("DQN", "DDQN") if r % 2 == 0 else ("DDQN", "DQN")
        for algo in order:
            done, elapsed = timed_chunk(models[algo], args.steps)
            steps[algo] += done
            seconds[algo] += elapsed
            rates[algo].append(done / elapsed)
        print(f"round {r + 1}/{args.rounds}  DQN {rates['DQN'][-1]:6.1f}  "
              f"DDQN {rates['DDQN'][-1]:6.1f} steps/s", flush=True)  # fmt: skip
    dqn = steps["DQN"] / seconds["DQN"]
    ddqn = steps["DDQN"] / seconds["DDQN"]
    paired = [b / a for a, b in zip(rates["DQN"], rates["DDQN"], strict=True)]
    print(
        f"\n{args.game}, {args.rounds} rounds x {args.steps} steps per algorithm, "
        f"train_freq={args.train_freq}, n_envs={args.n_envs}, batch 32, "
        f"torch threads={args.threads}"
    )
    print(f"DQN        {dqn:8.1f} steps/s ({steps['DQN']} steps in {seconds['DQN']:.1f} s)")
    print(f"DoubleDQN  {ddqn:8.1f} steps/s ({steps['DDQN']} steps in {seconds['DDQN']:.1f} s)")
    ratio = ddqn / dqn
    verdict = "met" if ratio >= 0.9 else "NOT met"
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in paired)}")
    print(
        f"ratio DoubleDQN/DQN = {ratio:.3f} (total steps/s; median of per-round ratios "
        f"{statistics.median(paired):.3f}, range {min(paired):.3f}-{max(paired):.3f})  "
        f"target >= 0.9: {verdict}"
    )
    cost = update_costs(models, args.update_reps)
    cycle = args.train_freq / dqn  # DQN's seconds per update cycle (train_freq env steps)
    print(
        f"one update (median of {args.update_reps}): DQN {cost['DQN'] * 1e3:.1f} ms, "
        f"DoubleDQN {cost['DDQN'] * 1e3:.1f} ms (+{(cost['DDQN'] - cost['DQN']) * 1e3:.1f}); "
        f"one no-grad batch-32 forward {cost['forward'] * 1e3:.1f} ms"
    )
    print(
        f"one extra forward per {args.train_freq} steps alone gives "
        f"{cycle * 1e3:.0f} / ({cycle * 1e3:.0f} + {cost['forward'] * 1e3:.1f}) ms = "
        f"{cycle / (cycle + cost['forward']):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
