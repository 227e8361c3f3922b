"""Input gradient of the Nature-DQN first convolution: PyTorch's backward vs space-to-depth.

Times ``d loss / d x`` (forward + backward, as a gradient attack needs it) of a ``Conv2d(4, 32,
8, stride=4)`` on ``(B, 4, 84, 84)`` inputs for ``nn.Conv2d`` and
:class:`sap_rl.fast_conv.FastInputGradConv2d` side by side, in alternating order per round;
prints medians and the ratio per batch size.

Usage::

    python benchmarks/bench_fast_conv.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns 0."""
    import torch
    from torch import nn

    from sap_rl.fast_conv import FastInputGradConv2d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16,160", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="gradients per timing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 32, 8, stride=4)
    fast = FastInputGradConv2d(4, 32, 8, stride=4)
    fast.load_state_dict(plain.state_dict())

    print(f"Conv2d(4, 32, 8, stride=4) input gradient, {args.threads} thread(s), "
          f"median of {args.rounds} rounds (ms per gradient)")  # fmt: skip
    print(f"{'batch':>6} {'nn.Conv2d':>10} {'fast':>8} {'ratio':>7} {'max rel. diff':>14}")
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.rand(batch, 4, 84, 84) * 255
        upstream = torch.randn(batch, 32, 20, 20)

        def grad(conv: nn.Module, x: torch.Tensor = x, up: torch.Tensor = upstream) -> torch.Tensor:
            xs = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(conv(xs), xs, up)
            return g

        g_plain, g_fast = grad(plain), grad(fast)
        diff = float((g_plain - g_fast).abs().max() / g_plain.abs().max())
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        for r in range(args.rounds):
            order = [("plain", plain), ("fast", fast)][:: 1 if r % 2 == 0 else -1]
            for name, conv in order:
                start = time.perf_counter()
                for _ in range(args.repeats):
                    grad(conv)
                times[name].append(1000 * (time.perf_counter() - start) / args.repeats)
        ratios = [p / f for p, f in zip(times["plain"], times["fast"], strict=True)]
        print(f"{batch:>6} {statistics.median(times['plain']):>10.2f} "
              f"{statistics.median(times['fast']):>8.2f} {statistics.median(ratios):>6.2f}x "
              f"{diff:>14.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
