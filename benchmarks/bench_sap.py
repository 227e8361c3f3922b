"""Forward+backward time of SAP-100 (exact and fast) against the same dense network.

Two networks, each timed side by side in one run with the variants interleaved round by round
(this machine is noisy, so only ratios measured together mean anything):

- the Nature-DQN Q-network at batch 256 on 4x84x84 frame stacks (4 ReLU layers);
- ResNet-20 for CIFAR-10 at batch 512 on 3x32x32 images (19 ReLU layers), the SAP paper's setting.

A straightforward ``torch.multinomial`` implementation of Algorithm 1 is timed too, as the
reference the sampler is meant to beat. Dhillon et al. reported about 20 s for one backward pass
of SAP-100 ResNet-20 at 512 examples on 8 GPUs; ours is printed beside it.

Both the median and the minimum over rounds are printed, each with its ratio to dense: other
processes only ever slow a round down, so on a shared machine the ratio of minima is the more
faithful figure, and the two agree on a quiet one.

Run: ``python benchmarks/bench_sap.py [--rounds 5] [--no-naive]``
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import numba
import torch
from torch import nn

from sap_rl.rl.agent import QNetwork
from sap_rl.sap import ActivationWrapper, StochasticModule, apply_sap, insert_after_relu
from sap_rl.vision.models import ResNet20

PAPER_SECONDS = (
    20.0  # Dhillon et al. 2018: SAP-100 ResNet-20, one backward pass, 512 images, 8 GPUs
)


class MultinomialSAP(StochasticModule):
    """Algorithm 1 written the obvious way: ``torch.multinomial`` draws, scatter, rescale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        with torch.no_grad():
            mass = flat.abs()
            total = mass.sum(dim=1, keepdim=True)
            p = torch.where(total > 0, mass / total.clamp(min=1e-30), 1.0 / flat.shape[1])
            r = flat.shape[1]
            idx = torch.multinomial(p, r, replacement=True)
            mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
            keep = -torch.expm1(r * torch.log1p(-p.clamp(max=1.0)))
            mult = torch.where(mask > 0, 1.0 / keep, 0.0)
        return (flat * mult).view_as(x)


def variants(model: nn.Module, naive: bool) -> dict[str, nn.Module]:
    out = {
        "dense": model,
        "sap-100 exact": apply_sap(copy.deepcopy(model), 1.0, "exact"),
        "sap-100 fast": apply_sap(copy.deepcopy(model), 1.0, "fast"),
    }
    if naive:
        net = copy.deepcopy(model)
        insert_after_relu(net, lambda relu: ActivationWrapper(relu, MultinomialSAP()))
        out["sap-100 torch.multinomial"] = net
    return out


def forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        xs = x.clone().requires_grad_(True)
        start = time.perf_counter()
        model(xs).sum().backward()
        return time.perf_counter() - start

    return run


def bench(
    title: str, model: nn.Module, x: torch.Tensor, rounds: int, naive: bool
) -> dict[str, float]:
    model.eval()
    runs = {name: forward_backward(net, x) for name, net in variants(model, naive).items()}
    for run in runs.values():  # warm-up: numba compilation, allocator, caches
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    best = {name: min(ts) for name, ts in times.items()}
    print(f"\n{title}")
    print(f"{'variant':<28}{'median s':>10}{'x dense':>9}{'min s':>9}{'x dense':>9}")
    for name in times:
        print(
            f"{name:<28}{medians[name]:>10.3f}{medians[name] / medians['dense']:>9.2f}"
            f"{best[name]:>9.3f}{best[name] / best['dense']:>9.2f}"
        )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the torch.multinomial baseline"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, numba {numba.__version__}, {torch.get_num_threads()} torch "
        f"threads, {numba.get_num_threads()} numba threads, {platform.machine()}"
    )
    naive = not args.no_naive
    frames = torch.randint(0, 256, (256, 4, 84, 84)).float()
    bench(
        "Nature-CNN Q-network, batch 256, 4x84x84, forward+backward",
        QNetwork(6),
        frames,
        args.rounds,
        naive,
    )
    images = torch.randint(0, 256, (512, 3, 32, 32)).float()
    medians = bench(
        "ResNet-20 (CIFAR-10), batch 512, 3x32x32, forward+backward",
        ResNet20(),
        images,
        args.rounds,
        naive,
    )
    print(
        f"\nSAP-100 ResNet-20 at 512 images: exact {medians['sap-100 exact']:.2f} s, fast "
        f"{medians['sap-100 fast']:.2f} s (median) for forward+backward on this CPU; "
        f"Dhillon et al. reported {PAPER_SECONDS:.0f} s for one backward pass on 8 GPUs."
    )


if __name__ == "__main__":
    main()
