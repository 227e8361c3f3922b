"""EOT gradients: copies made at the first random layer vs copies of the input.

An EOT attack averages the input gradient over ``k`` draws of a stochastic defense. Stacking
``k`` copies of the input batch (``model(repeat_rows(x, k))``) runs the whole network ``k``
times; :func:`sap_rl.sap.forward_copies` runs the deterministic layers before the first random
one once and repeats their output instead (for a Nature-CNN Q-network with SAP after every ReLU:
the first convolution, forward and backward). Both give the same gradient in distribution.

Times one EOT input gradient (forward + backward, ``--samples`` draws) for each way, alternating
per round, and prints the medians and their ratio, for each defense.

Usage::

    python benchmarks/bench_eot.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns 0."""
    import torch
    import torch.nn.functional as F

    from sap_rl.defenses import apply_defense
    from sap_rl.rl.agent import QNetwork
    from sap_rl.sap import forward_copies, repeat_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defenses", default="sap-100,sap-50,dropout-0.1")
    parser.add_argument("--batch", type=int, default=10, help="observations (parallel games)")
    parser.add_argument("--samples", type=int, default=16, help="draws per EOT gradient")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="gradients per timing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = QNetwork(18).eval()
    x = torch.rand(args.batch, 4, 84, 84) * 255
    labels = torch.zeros(args.batch * args.samples, dtype=torch.long)

    def gradient(model: torch.nn.Module, lazy: bool) -> torch.Tensor:
        xs = x.detach().requires_grad_(True)
        if lazy:
            logits = forward_copies(model, xs, args.samples)
        else:
            logits = model(repeat_rows(xs, args.samples))
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), xs)
        return grad

    print(
        f"EOT input gradient, Nature-CNN Q-network, batch {args.batch} x {args.samples} draws, "
        f"{args.threads} thread(s), median of {args.rounds} rounds (ms per gradient)"
    )
    print(f"{'defense':<12} {'input copies':>13} {'forward_copies':>15} {'ratio':>7}")
    for name in args.defenses.split(","):
        model = apply_defense(net, name).eval()
        times: dict[bool, list[float]] = {False: [], True: []}
        for lazy in (False, True):
            gradient(model, lazy)  # warm-up (numba compilation, allocator)
        for r in range(args.rounds):
            for lazy in (False, True) if r % 2 == 0 else (True, False):
                start = time.perf_counter()
                for _ in range(args.repeats):
                    gradient(model, lazy)
                times[lazy].append(1000 * (time.perf_counter() - start) / args.repeats)
        ratios = [a / b for a, b in zip(times[False], times[True], strict=True)]
        before, after = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<12} {before:>13.1f} {after:>15.1f} {statistics.median(ratios):>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
