"""ResNet-20 at batch 512: forward+backward with dense vs SAP-100 (exact and fast), and what that
means for the CIFAR-10 study.

Three variants of one ResNet-20 (``sap_rl.defenses.apply_defense``: ``dense``, ``sap-100``,
``sap-100-fast``) are timed side by side, interleaved round by round so that load from other
processes hits all alike; figures are medians over rounds (ratios are of medians measured in the
same run). Measured:

- **forward+backward** of a 512-image batch w.r.t. the input (one attack gradient, the unit the
  SAP paper timed). Dhillon et al. (2018) quoted about 20 s for this with SAP-100 on 8 GPUs; our
  figure is printed beside it;
- **forward only** (no gradient) of the same batch: one Monte Carlo pass of a prediction.
  From it, the time of one clean evaluation cell of the CIFAR-10 study (10,000 test images x 100
  passes) is extrapolated.

Usage::

    nice -n 10 python benchmarks/bench_vision.py [--rounds 3] [--device cpu|cuda] [--batch 512]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from sap_rl.defenses import apply_defense
from sap_rl.vision.models import ResNet20, count_parameters

#: Dhillon et al. 2018: SAP-100 ResNet-20, one gradient at 512 images, 8 GPUs (as quoted).
PAPER_SECONDS = 20.0
VARIANTS = ("dense", "sap-100", "sap-100-fast")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], float]:
    """One timed forward+backward pass w.r.t. the input (an attack gradient)."""

    def run() -> float:
        xs = x.clone().requires_grad_(True)
        _sync(x.device)
        start = time.perf_counter()
        model(xs).logsumexp(dim=1).sum().backward()
        _sync(x.device)
        return time.perf_counter() - start

    return run


def forward_only(model: nn.Module, x: torch.Tensor) -> Callable[[], float]:
    """One timed forward pass without gradient (a Monte Carlo prediction pass)."""

    def run() -> float:
        _sync(x.device)
        start = time.perf_counter()
        with torch.no_grad():
            model(x)
        _sync(x.device)
        return time.perf_counter() - start

    return run


def timed(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Warm each run up once, then time ``rounds`` interleaved rounds."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return times


def table(title: str, times: dict[str, list[float]]) -> dict[str, float]:
    """Print median, min and ratio to dense; return the medians."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{title}")
    print(f"{'variant':<16}{'median s':>10}{'min s':>9}{'x dense':>9}")
    for name, ts in times.items():
        ratio = medians[name] / medians["dense"]
        print(f"{name:<16}{medians[name]:>10.3f}{min(ts):>9.3f}{ratio:>9.2f}")
    return medians


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=512, help="images per batch (paper: 512)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    model = ResNet20().to(device).eval()
    nets = {name: apply_defense(model, name).to(device).eval() for name in VARIANTS}
    x = (torch.rand(args.batch, 3, 32, 32) * 255).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(
        f"ResNet-20 ({count_parameters(model):,} parameters), batch {args.batch}, {device} "
        f"({where}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds"
    )

    grad = table(
        f"forward+backward w.r.t. the input, batch {args.batch}",
        timed({n: forward_backward(net, x) for n, net in nets.items()}, args.rounds),
    )
    fwd = table(
        f"forward only (one Monte Carlo pass), batch {args.batch}",
        timed({n: forward_only(net, x) for n, net in nets.items()}, args.rounds),
    )

    print(
        f"\nSAP paper (Dhillon et al. 2018): ~{PAPER_SECONDS:.0f} s per SAP-100 gradient at 512 "
        "images, on 8 GPUs"
    )
    scale = 512 / args.batch
    for name in ("sap-100", "sap-100-fast"):
        print(
            f"ours, {name:<13} on {device.type}: {grad[name] * scale:8.2f} s per gradient at 512 "
            f"images ({PAPER_SECONDS / (grad[name] * scale):.1f}x the paper's speed)"
        )
    per_image_pass = {name: fwd[name] / args.batch for name in VARIANTS}
    cell = {name: per_image_pass[name] * 10_000 * (1 if name == "dense" else 100)
            for name in VARIANTS}  # fmt: skip
    print(
        "\nCIFAR-10 clean cell (10,000 test images; 100 Monte Carlo passes for SAP): "
        + ", ".join(f"{name} {cell[name] / 60:.1f} min" for name in VARIANTS)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
