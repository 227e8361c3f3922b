"""Training throughput: SB3's ``DQN`` vs our ``DoubleDQN``, and each of DoubleDQN's speed levers.

All models train on the same real ALE game, with the same seed, replay buffer
(``FrameReplayBuffer``, as ``sap-rl train``), hyperparameters and torch thread count. Built and
warmed up (buffer past ``learning_starts``) in one process, they train in turns of ``--steps``
env steps, the order rotating every round, so load from other processes hits all of them alike
within seconds. A ratio is a model's total steps/s over DQN's; the per-round ratios show the
spread. On a busy machine the ratio per CPU second (steps over this process's CPU time, which
leaves out the waits for a free core) is the steadier one.

The variants (``--variants``): ``DoubleDQN`` as shipped (torch's fused Adam, channels-last
convolutions, a leaner ``predict``, uint8 batches made channels-last floats one channel at a
time), each lever taken away (``-fused``, ``-channels_last``, ``-predict``, ``-input``), none of
them (``-all``: DoubleDQN before them), and two levers tried and not kept
(``+batched``: one pass of the online network over s and s' together; ``+inference``: the target
side under ``torch.inference_mode``).

Afterwards it times, interleaved, one gradient update (``train(1, 32)``) of DQN and DoubleDQN and
one no-gradient batch-32 forward pass of the Q-network, the extra work Double DQN cannot avoid,
and prints the ratio a DoubleDQN would reach if that forward pass were its only difference:
``cycle / (cycle + forward)``, with ``cycle`` DQN's seconds per ``train_freq`` env steps.

Usage::

    nice -n 10 python benchmarks/bench_train.py --game Pong --steps 500 --rounds 10
    nice -n 10 python benchmarks/bench_train.py --env-backend ale_vector --variants DoubleDQN

Target: DoubleDQN >= 1.0x DQN steps/second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

VARIANTS = ("DoubleDQN", "-fused", "-channels_last", "-predict", "-input", "-inplace", "-all",
            "+batched", "+inference")  # fmt: skip


def variant_class(name: str) -> type:
    """The DoubleDQN (sub)class of a variant: levers that live in methods."""
    import torch as th
    from stable_baselines3 import DQN
    from stable_baselines3.common.preprocessing import preprocess_obs

    from sap_rl.rl.dqn import DoubleDQN, _q_values, double_dqn_target

    class SB3Predict(DoubleDQN):
        predict = DQN.predict

    class ContiguousInput(DoubleDQN):
        """The input path before (also predict's): uint8 NCHW -> NHWC, SB3's preprocess_obs."""

        def _network_input(self, obs: th.Tensor) -> th.Tensor:
            if self.channels_last and obs.dim() == 4:
                obs = obs.contiguous(memory_format=th.channels_last)
            out: th.Tensor = preprocess_obs(obs, self.q_net.observation_space)  # type: ignore[assignment]
            return out

    class Batched(DoubleDQN):
        def _q_and_target(self, data: Any) -> tuple[th.Tensor, th.Tensor]:
            obs = self._network_input(data.observations)
            nxt = self._network_input(data.next_observations)
            both = _q_values(self.q_net, th.cat([obs, nxt]))  # one pass, gradient for both
            with th.no_grad():
                next_target = _q_values(self.q_net_target, nxt)
            discounts = data.discounts if data.discounts is not None else self.gamma
            target = double_dqn_target(
                data.rewards, data.dones, discounts, both[len(obs) :].detach(), next_target
            )
            return both[: len(obs)], target

    class Inference(DoubleDQN):
        def _td_target(self, data: Any, next_input: th.Tensor) -> th.Tensor:
            discounts = data.discounts if data.discounts is not None else self.gamma
            with th.inference_mode():
                next_target = _q_values(self.q_net_target, next_input)
                next_online = _q_values(self.q_net, next_input)
                out = double_dqn_target(data.rewards, data.dones, discounts, next_online,
                                        next_target)  # fmt: skip
            return out.clone()  # an inference tensor cannot enter the autograd graph

    class Before(SB3Predict, ContiguousInput):
        """DoubleDQN before all levers (also without fused Adam and channels-last: build())."""

    return {"-predict": SB3Predict, "-input": ContiguousInput, "-all": Before, "+batched": Batched,
            "+inference": Inference}.get(name, DoubleDQN)  # fmt: skip


def build(algo: str, args: argparse.Namespace) -> Any:
    """A DQN or DoubleDQN variant on a fresh env, warmed up past ``learning_starts``."""
    from stable_baselines3 import DQN

    from sap_rl.rl.envs import AtariPreprocessing, make_vec_env
    from sap_rl.rl.replay import FrameReplayBuffer

    env = make_vec_env(args.game, args.n_envs, seed=args.seed, training=True,
                       preprocessing=AtariPreprocessing(backend=args.env_backend))  # fmt: skip
    kwargs: dict[str, Any] = {}
    if algo != "DQN":
        kwargs["channels_last"] = algo not in ("-channels_last", "-all")
        kwargs["inplace_relu"] = algo not in ("-inplace", "-all")
        if algo in ("-fused", "-all"):
            kwargs["policy_kwargs"] = {"optimizer_kwargs": {"foreach": True}}
    cls: Any = DQN if algo == "DQN" else variant_class(algo)
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
        replay_buffer_class=FrameReplayBuffer,
        seed=args.seed,
        device="cpu",
        **kwargs,
    )
    model.learn(args.learning_starts + 100)  # warm-up: fill the buffer, first updates
    return model


def timed_chunk(model: Any, steps: int) -> tuple[int, float, float]:
    """Train ``steps`` more env steps; return (steps done, seconds, CPU seconds of the process).

    Everything runs in this process (one torch thread, the envs in-process), so its CPU time
    leaves out the waits for a core that other processes cause on a busy machine.
    """
    start_steps = model.num_timesteps
    start, start_cpu = time.perf_counter(), time.process_time()
    model.learn(steps, reset_num_timesteps=False)
    cpu = time.process_time() - start_cpu
    return model.num_timesteps - start_steps, time.perf_counter() - start, cpu


def update_costs(models: dict[str, Any], reps: int) -> dict[str, dict[str, float]]:
    """Median seconds of each model's update and greedy action, and of one no-grad forward.

    The jobs take turns (model after model, ``reps`` times), so load hits them alike: these
    per-lever costs are steadier than the chunked steps/s on a busy machine.
    """
    import numpy as np
    import torch

    q_net = models["DQN"].q_net
    batch = models["DQN"].replay_buffer.sample(32).next_observations  # uint8, as in train()
    obs = np.asarray(batch[:1])  # one env's observation, as the training loop's predict gets

    def forward() -> None:
        with torch.no_grad():
            q_net(batch)

    jobs: dict[tuple[str, str], Any] = {("DQN", "forward"): forward}
    for name, model in models.items():
        jobs[name, "update"] = lambda m=model: m.train(1, 32)
        jobs[name, "predict"] = lambda m=model: m.predict(obs, deterministic=True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(reps):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            times[key].append(time.perf_counter() - start)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for (name, what), values in times.items():
        out[name][what] = statistics.median(values)
    return out


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
    parser.add_argument(
        "--env-backend",
        choices=("gymnasium", "ale_vector"),
        default="gymnasium",
        help="environments of every model: the wrapper stack or ale-py's AtariVectorEnv",
    )
    parser.add_argument("--update-reps", type=int, default=40, help="timed updates per model")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"DoubleDQN variants besides DQN, comma-separated (default: all of {VARIANTS})",
    )
    args = parser.parse_args(argv)
    if not args.malloc_defaults:
        from sap_rl.memory import keep_freed_memory

        keep_freed_memory()  # as the sap-rl command line does

    import torch

    torch.set_num_threads(args.threads)
    names = ["DQN", "DoubleDQN", *(v for v in args.variants.split(",") if v and v != "DoubleDQN")]
    unknown = set(names) - {"DQN", *VARIANTS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    models = {name: build(name, args) for name in names}
    steps = {name: 0 for name in models}
    seconds = {name: 0.0 for name in models}
    cpu_seconds = {name: 0.0 for name in models}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            done, elapsed, cpu = timed_chunk(models[name], args.steps)
            steps[name] += done
            seconds[name] += elapsed
            cpu_seconds[name] += cpu
            rates[name].append(done / elapsed)
        print(f"round {r + 1}/{args.rounds}  "
              + "  ".join(f"{n} {rates[n][-1]:.1f}" for n in names) + " steps/s",
              flush=True)  # fmt: skip
    print(
        f"\n{args.game}, {args.rounds} rounds x {args.steps} steps per model, "
        f"train_freq={args.train_freq}, n_envs={args.n_envs}, batch 32, "
        f"torch threads={args.threads}, envs: {args.env_backend}"
    )
    dqn = steps["DQN"] / seconds["DQN"]
    dqn_cpu = steps["DQN"] / cpu_seconds["DQN"]
    for name in names:
        rate, cpu_rate = steps[name] / seconds[name], steps[name] / cpu_seconds[name]
        paired = [b / a for a, b in zip(rates["DQN"], rates[name], strict=True)]
        label = "DQN (SB3)" if name == "DQN" else name if name == "DoubleDQN" else f"DDQN {name}"
        print(f"{label:20s} {rate:8.1f} steps/s ({steps[name]} steps in {seconds[name]:.1f} s)"
              + ("" if name == "DQN" else f"  / DQN {rate / dqn:.3f} (per round "
                 f"{min(paired):.3f}-{max(paired):.3f})")
              + f"; per CPU second {cpu_rate:.1f}"
              + ("" if name == "DQN" else f" / DQN {cpu_rate / dqn_cpu:.3f}"))  # fmt: skip
    ddqn = steps["DoubleDQN"] / seconds["DoubleDQN"]
    paired = [b / a for a, b in zip(rates["DQN"], rates["DoubleDQN"], strict=True)]
    ratio = ddqn / dqn
    verdict = "met" if ratio >= 1.0 else "NOT met"
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in paired)}")
    print(
        f"ratio DoubleDQN/DQN = {ratio:.3f} (total steps/s; median of per-round ratios "
        f"{statistics.median(paired):.3f}, range {min(paired):.3f}-{max(paired):.3f})  "
        f"target >= 1.0: {verdict}"
    )
    cpu_ratio = steps["DoubleDQN"] / cpu_seconds["DoubleDQN"] / dqn_cpu
    print(
        f"ratio per CPU second (this process's CPU time, no waits for a busy core) = "
        f"{cpu_ratio:.3f}"
    )
    cost = update_costs(models, args.update_reps)
    cycle = args.train_freq / dqn  # DQN's seconds per update cycle (train_freq env steps)
    print(f"\nmedians of {args.update_reps} interleaved calls: one update train(1, 32), one greedy "
          f"predict (batch 1), and the cost of {args.train_freq} steps' model work "
          f"(update + {args.train_freq} predicts) over DQN's")  # fmt: skip
    base = cost["DQN"]["update"] + args.train_freq * cost["DQN"]["predict"]
    for name in names:
        work = cost[name]["update"] + args.train_freq * cost[name]["predict"]
        label = "DQN (SB3)" if name == "DQN" else name if name == "DoubleDQN" else f"DDQN {name}"
        update, predict = cost[name]["update"] * 1e3, cost[name]["predict"] * 1e3
        print(f"{label:20s} update {update:6.1f} ms  predict {predict:5.2f} ms  "
              f"model work / DQN's {work / base:.3f}")  # fmt: skip
    ddqn_update, forward = cost["DoubleDQN"]["update"], cost["DQN"]["forward"]
    print(
        f"one update (median of {args.update_reps}): DQN {cost['DQN']['update'] * 1e3:.1f} ms, "
        f"DoubleDQN {ddqn_update * 1e3:.1f} ms "
        f"({(ddqn_update - cost['DQN']['update']) * 1e3:+.1f}); "
        f"one no-grad batch-32 forward {forward * 1e3:.1f} ms"
    )
    print(
        f"one extra forward per {args.train_freq} steps alone gives "
        f"{cycle * 1e3:.0f} / ({cycle * 1e3:.0f} + {forward * 1e3:.1f}) ms = "
        f"{cycle / (cycle + forward):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
