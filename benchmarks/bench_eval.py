"""Perturbed-play throughput: the batched evaluator vs a one-env-at-a-time wrapper loop.

Ways of playing the same capped games of a real ALE game, measured side by side:

- ``batched fgsm``: the evaluator's path (:func:`sap_rl.rl.play.play_matched_games` with
  :func:`~sap_rl.rl.play.agent_policy`): all ``n_envs`` games attacked in one
  forward/backward pass per step;
- ``wrapper fgsm``: the plain user loop (:func:`~sap_rl.rl.play.play_wrapped`): one env at a
  time wrapped in :class:`~sap_rl.rl.perturb.PerturbObservation`, one game after the other;
- ``batched clean`` and ``wrapper clean``: the same loops at eps = 0 (no attack), for the attack's
  overhead;
- ``emulators only``: the batched loop's envs and games with random actions and no network, the
  emulation and frame handling that every loop pays per agent step;
- ``ale_vector fgsm``, ``ale_vector clean`` and ``ale_vector emulators``: the batched loop, the
  same games (:mod:`sap_rl.rl.ale_vector` plays them identically), on the ``ale_vector`` env
  backend (``sap-rl evaluate --env-backend ale_vector``: ale-py's C++ ``AtariVectorEnv``, one
  thread per game) instead of the gymnasium wrappers; ``--no-ale-vector`` leaves them out;
- ``workers fgsm`` (with ``--workers N`` > 1): what ``sap-rl evaluate --workers N`` does, N FGSM
  cells (eps, 2 eps, ...; games of the same length, all capped) played at the same time by
  the grid engine's local executor in N worker processes, each cell batched as above.
  Starting the workers (spawned processes that import torch) is inside the timed region.

After the rounds it times the network work alone, interleaved: one ``ObservationAttack.act`` (attack
plus the agent's action) on random frames at batch ``n_envs`` and at batch 1, per agent step. The
wrapper's whole step divided by the batched network work per agent step is the most that batching
in one process could give if the emulators cost nothing; with the ``emulators only`` time added to
the batched network work, the most it can give with them (both are serial in one process).

Every round runs the modes in a rotated order, so that load from other processes hits all alike;
the figures are medians over rounds, and each ratio is the median of the per-round ratios.
Env construction is inside the timed region for both loops. Agent steps per second count the
agent's decisions (4 emulator frames each) over all games. The Q-network is the agent's (with
``--agent``) or an untrained Nature-CNN of the same shape: the compute per step is the same.

Usage::

    nice -n 10 python benchmarks/bench_eval.py --game Pong --rounds 3

Both loops use ``--threads`` CPU threads (default 1, the fastest setting on a busy 2-core machine;
see docs/evaluation.md). ``--defense sap-100`` times a stochastic defense instead of ``dense``.

Target: batched fgsm >= 3x wrapper fgsm (agent steps per second). The ``workers`` line uses N
processes where the other loops use one: it measures the whole evaluator on an N-core machine,
not the batching alone, and is reported as its own ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns 0."""
    import torch

    from sap_rl.defenses import apply_defense
    from sap_rl.grid import LocalExecutor, Work, set_threads, split_cell
    from sap_rl.rl.agent import QNetwork, load_agent
    from sap_rl.rl.envs import AtariPreprocessing, n_actions
    from sap_rl.rl.eval_config import AtariEvalConfig, Cell
    from sap_rl.rl.evaluate_cells import GamePlayer
    from sap_rl.rl.perturb import ObservationAttack
    from sap_rl.rl.play import (
        GamePolicy,
        agent_policy,
        make_eval_envs,
        play_matched_games,
        play_wrapped,
        random_policy,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--agent", default=None, help="agent folder (default: untrained net)")
    parser.add_argument("--defense", default="dense")
    parser.add_argument("--attack", default="fgsm")
    parser.add_argument("--eps", type=float, default=2.0)
    parser.add_argument("--n-envs", type=int, default=16, help="parallel envs of the batched path")
    parser.add_argument("--batched-games", type=int, default=16)
    parser.add_argument("--wrapper-games", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=400, help="cap per game (agent steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (of each process)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the workers mode")
    parser.add_argument(
        "--no-ale-vector", action="store_true", help="leave out the ale_vector backend's modes"
    )
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="keep glibc's malloc defaults (sap-rl's commands keep freed memory)",
    )
    args = parser.parse_args(argv)
    if not args.malloc_defaults:
        from sap_rl.memory import keep_freed_memory

        keep_freed_memory()  # as the sap-rl command line does

    set_threads(args.threads)
    torch.manual_seed(0)
    if args.agent:
        net, _ = load_agent(args.agent, game=args.game)
    else:
        net = QNetwork(n_actions(args.game)).eval()
    model = apply_defense(net, args.defense).eval()
    preprocessing = AtariPreprocessing(max_episode_frames=4 * args.max_steps)

    on_ale = dataclasses.replace(preprocessing, backend="ale_vector")

    def play_batched(policy: GamePolicy, ale: bool = False) -> int:
        """The batched loop: fresh envs, ``--batched-games`` games; returns the agent steps."""
        envs = make_eval_envs(args.game, args.n_envs, on_ale if ale else preprocessing)
        games = play_matched_games(envs, policy, args.batched_games, seed=0)
        for env in envs:
            env.close()
        return sum(g.length for g in games)

    def batched(eps: float, ale: bool = False) -> Callable[[], int]:
        return lambda: play_batched(agent_policy(ObservationAttack(model, args.attack, eps)), ale)

    def emulators(ale: bool = False) -> Callable[[], int]:
        return lambda: play_batched(random_policy(n_actions(args.game), seed=0), ale)

    def wrapper(eps: float) -> Callable[[], int]:
        def run() -> int:
            games = play_wrapped(args.game, model, args.wrapper_games, attack=args.attack,
                                 eps=eps, max_steps=args.max_steps)  # fmt: skip
            return sum(g.length for g in games)

        return run

    def workers() -> int:
        budgets = [args.eps * (i + 1) for i in range(args.workers)]
        config = AtariEvalConfig(
            defenses=[args.defense], attacks=[args.attack], episodes=args.batched_games,
            n_envs=args.n_envs, max_steps=args.max_steps, threads=args.threads, eps=budgets,
            workers=args.workers,
        )  # fmt: skip
        cells = [Cell(config.defenses[0], config.attacks[0], eps) for eps in config.eps[1:]]
        units = [u for c in cells for u in split_cell(c.name, config.episodes, config.n_envs)]
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        work = Work(GamePlayer, (state, args.game, config), threads=args.threads)
        with LocalExecutor(args.workers) as executor:
            return sum(g["length"] for _, games, _ in executor.run(work, units) for g in games)

    modes = {
        f"batched {args.attack}": batched(args.eps),
        f"wrapper {args.attack}": wrapper(args.eps),
        "batched clean": batched(0.0),
        "wrapper clean": wrapper(0.0),
        "emulators only": emulators(),
    }
    if not args.no_ale_vector:
        modes[f"ale_vector {args.attack}"] = batched(args.eps, ale=True)
        modes["ale_vector clean"] = batched(0.0, ale=True)
        modes["ale_vector emulators"] = emulators(ale=True)
    if args.workers > 1:
        modes[f"workers {args.attack}"] = workers
    names = list(modes)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            steps = modes[name]()
            rates[name].append(steps / (time.perf_counter() - start))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names),
              file=sys.stderr, flush=True)  # fmt: skip

    def act_ms(batch: int, reps: int) -> Callable[[], float]:
        attack = ObservationAttack(model, args.attack, args.eps)
        frames = torch.randint(0, 256, (batch, 4, 84, 84)).float()

        def run() -> float:
            start = time.perf_counter()
            for _ in range(reps):
                attack.act(frames)
            return 1e3 * (time.perf_counter() - start) / (reps * batch)

        return run

    compute = {args.n_envs: act_ms(args.n_envs, 5), 1: act_ms(1, 5 * args.n_envs)}
    per_step: dict[int, list[float]] = {batch: [] for batch in compute}
    for r in range(args.rounds + 1):
        for batch, job in compute.items() if r % 2 else reversed(compute.items()):
            ms = job()
            if r > 0:  # round 0 warms up
                per_step[batch].append(ms)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    print(f"game {args.game}, defense {args.defense}, {args.attack} eps={args.eps:g}, "
          f"n_envs {args.n_envs}, games capped at {args.max_steps} steps, "
          f"torch threads {torch.get_num_threads()}, workers {args.workers}, "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"{'mode':<20} {'agent steps/s':>14} {'min':>8} {'max':>8}")
    for name in names:
        print(f"{name:<20} {statistics.median(rates[name]):>14.0f} "
              f"{min(rates[name]):>8.0f} {max(rates[name]):>8.0f}")  # fmt: skip
    attack = args.attack
    speedup = ratio(f"batched {attack}", f"wrapper {attack}")
    print(f"batched / wrapper under {attack}: {speedup:.2f}x (target >= 3x)")
    if args.workers > 1:
        print(f"{args.workers} workers / wrapper under {attack}: "
              f"{ratio(f'workers {attack}', f'wrapper {attack}'):.2f}x "
              f"({args.workers} processes vs 1)")  # fmt: skip
    print(f"batched / wrapper clean:        {ratio('batched clean', 'wrapper clean'):.2f}x")
    print(f"attack overhead, batched: clean / {attack} = "
          f"{ratio('batched clean', f'batched {attack}'):.2f}x")  # fmt: skip
    print(f"attack overhead, wrapper: clean / {attack} = "
          f"{ratio('wrapper clean', f'wrapper {attack}'):.2f}x")  # fmt: skip
    if not args.no_ale_vector:
        print(f"ale_vector / batched under {attack}: "
              f"{ratio(f'ale_vector {attack}', f'batched {attack}'):.2f}x, clean: "
              f"{ratio('ale_vector clean', 'batched clean'):.2f}x, emulators only: "
              f"{ratio('ale_vector emulators', 'emulators only'):.2f}x")  # fmt: skip
        print(f"ale_vector / wrapper under {attack}: "
              f"{ratio(f'ale_vector {attack}', f'wrapper {attack}'):.2f}x, clean: "
              f"{ratio('ale_vector clean', 'wrapper clean'):.2f}x")  # fmt: skip
    batched_ms = statistics.median(per_step[args.n_envs])
    single_ms = statistics.median(per_step[1])
    wrapper_ms = 1e3 / statistics.median(rates[f"wrapper {attack}"])
    print(f"network work per agent step ({attack} + action): batch {args.n_envs} {batched_ms:.2f}"
          f" ms, batch 1 {single_ms:.2f} ms ({single_ms / batched_ms:.2f}x)")  # fmt: skip
    emulator_ms = 1e3 / statistics.median(rates["emulators only"])
    print(f"one process, emulators free: wrapper step {wrapper_ms:.2f} ms / {batched_ms:.2f} ms "
          f"= at most {wrapper_ms / batched_ms:.2f}x")  # fmt: skip
    print(f"one process with its emulators ({emulator_ms:.2f} ms per agent step, random play): "
          f"{wrapper_ms:.2f} / ({emulator_ms:.2f} + {batched_ms:.2f}) ms "
          f"= at most {wrapper_ms / (emulator_ms + batched_ms):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
