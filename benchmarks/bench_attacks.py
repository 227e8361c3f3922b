"""Cost of each attack per image (digits CNN) and per agent step (Nature CNN), next to FGSM's.

Every attack runs through :meth:`sap_rl.attacks.AttackSpec.run`, as the evaluators call it, on a
defended model (``--defense``, SAP-100 by default, so ``-eot`` attacks really draw
``--eot-samples`` times):

- **digits**: the committed digits CNN (``results/vision/models/digits-dense``) on
  ``--images`` test images at ``--vision-eps`` grey levels; cost per image.
- **atari**: the shipped ``roadrunner-ddqn`` Nature-CNN Q-network on ``--frames`` real frame
  stacks (random play, the batch the evaluator attacks at once with ``--n-envs`` games) at
  ``--atari-eps``; cost per agent step of one game.

Attacks are timed side by side, in a rotated order each round, so that load from other processes
hits all alike; the ratio to FGSM is the median of the per-round ratios. ``changed`` is the
fraction of inputs whose prediction (mean output over ``--eot-samples`` draws) the attack changed,
a sanity check that the costly attacks do something. Square stops early on inputs it has fooled,
so its cost depends on the model and budget.

Usage::

    nice -n 10 python benchmarks/bench_attacks.py --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ATTACKS = (
    "fgsm,fgsm-eot,pgd-10,pgd-10-eot,pgd-10-cw-r5,apgd-ce,apgd-ce-eot,apgd-dlr,apgd-dlr-eot,"
    "square,square-eot"
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per domain; returns 0."""
    import torch

    from sap_rl.attacks import AttackSpec, parse_attack, predict
    from sap_rl.defenses import apply_defense

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated names")
    parser.add_argument("--domains", default="digits,atari", help="digits, atari or both")
    parser.add_argument("--defense", default="sap-100")
    parser.add_argument("--eot-samples", type=int, default=16)
    parser.add_argument("--images", type=int, default=64, help="digits test images per batch")
    parser.add_argument("--frames", type=int, default=4, help="frame stacks per agent step")
    parser.add_argument("--vision-eps", type=float, default=16.0)
    parser.add_argument("--atari-eps", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = [parse_attack(name) for name in args.attacks.split(",")]
    if specs[0].name != "fgsm":
        specs.insert(0, parse_attack("fgsm"))  # the reference every ratio is against

    def bench(title: str, model: torch.nn.Module, x: torch.Tensor, eps: float) -> None:
        model = apply_defense(model, args.defense).eval()
        clean = predict(model, x, samples=args.eot_samples).argmax(dim=1)
        times: dict[str, list[float]] = {spec.name: [] for spec in specs}
        changed: dict[str, float] = {}

        def run(spec: AttackSpec) -> tuple[float, torch.Tensor]:
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            x_adv = spec.run(model, x, eps, eot_samples=args.eot_samples, generator=generator)
            return time.perf_counter() - start, x_adv

        run(specs[0])  # warm-up (numba compilation, allocator)
        for r in range(args.rounds):
            shift = r % len(specs)
            for spec in specs[shift:] + specs[:shift]:
                seconds, x_adv = run(spec)
                times[spec.name].append(seconds / x.shape[0])
                if spec.name not in changed:
                    after = predict(model, x_adv, samples=args.eot_samples).argmax(dim=1)
                    changed[spec.name] = float((after != clean).float().mean())
        reference = times[specs[0].name]
        print(f"\n{title}")
        print(f"{'attack':<16}{'ms each':>11}{'x fgsm':>9}{'changed':>9}")
        for spec in specs:
            ts = times[spec.name]
            ratio = statistics.median(t / f for t, f in zip(ts, reference, strict=True))
            print(
                f"{spec.name:<16}{1000 * statistics.median(ts):>11.2f}{ratio:>9.1f}"
                f"{changed[spec.name]:>9.2f}"
            )

    print(
        f"attack cost, defense {args.defense}, {args.eot_samples} EOT draws, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.rounds} rounds"
    )
    domains = args.domains.split(",")
    if "digits" in domains:
        from sap_rl.vision.data import load_digits
        from sap_rl.vision.models import load_model

        model, _ = load_model(ROOT / "results" / "vision" / "models" / "digits-dense")
        data = load_digits()
        x = torch.as_tensor(data.x_test[: args.images]).float()
        bench(
            f"digits CNN, {x.shape[0]} images at eps {args.vision_eps:g}: ms per image",
            model, x, args.vision_eps,
        )  # fmt: skip
    if "atari" in domains:
        import numpy as np

        from sap_rl.rl.agent import load_agent
        from sap_rl.rl.envs import make_env

        net, card = load_agent(ROOT / "agents" / "roadrunner-ddqn")
        env = make_env(card.game, seed=0, training=False)
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        frames = []
        for step in range(40 * args.frames):
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if terminated or truncated:
                obs, _ = env.reset()
            if step % 40 == 39:  # frames far apart in the game
                frames.append(torch.as_tensor(np.asarray(obs)).float())
        env.close()
        x = torch.stack(frames)
        bench(
            f"roadrunner-ddqn Q-network, {x.shape[0]} frame stacks (4x84x84) at eps "
            f"{args.atari_eps:g}: ms per agent step of one game",
            net, x, args.atari_eps,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
