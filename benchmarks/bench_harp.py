"""The cost of one HARP pruning epoch against one dense adversarial-training epoch, as a ratio.

Both epochs run the same objective (PGD-AT with PGD-``steps``, eps 8 and step 2 pixel levels) on
the same model and the same batches; HARP additionally computes a top-k mask per layer on every
forward pass (attack steps included), its straight-through gradients to the scores and rates, and
the hardware loss. The two are timed interleaved, round by round, so that load from other
processes hits both alike; figures are medians over rounds.

Usage::

    nice -n 10 python benchmarks/bench_harp.py [--model digits_cnn|resnet20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sap_rl.pruning import HarpConfig, harp_prune
from sap_rl.pruning.objectives import adversarial_loss
from sap_rl.vision.models import build_model


def _batches(
    shape: tuple[int, int, int], n_batches: int, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, *shape, generator=g) * 255, torch.randint(10, (batch,), generator=g))
            for _ in range(n_batches)]  # fmt: skip


def dense_epoch(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                steps: int) -> float:  # fmt: skip
    """Seconds for one epoch of PGD adversarial training of the dense model."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss, _ = adversarial_loss("pgd", model, x, y, eps=8, steps=steps, step_size=2,
                                   generator=generator)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def harp_epoch(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               steps: int) -> float:  # fmt: skip
    """Seconds for one HARP pruning epoch (scores and rates learn; no fine-tuning)."""
    config = HarpConfig(sparsity=0.99, prune_epochs=1, finetune_epochs=0, steps=steps)
    seconds: list[float] = []
    harp_prune(model, lambda epoch: batches, config,
               on_epoch=lambda log: seconds.append(log.seconds))  # fmt: skip
    return seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn", choices=["digits_cnn", "resnet20"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch")
    parser.add_argument("--batch", type=int, default=64, help="examples per batch")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the objective")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (1, 8, 8) if args.model == "digits_cnn" else (3, 32, 32)
    dataset = "digits" if args.model == "digits_cnn" else "cifar10"
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, input_shape=shape, dataset=dataset)
    batches = _batches(shape, args.batches, args.batch)
    dense, harp = [], []
    for _ in range(args.rounds):
        dense.append(dense_epoch(build_model(args.model, num_classes=10, input_shape=shape,
                                             dataset=dataset), batches, args.steps))  # fmt: skip
        harp.append(harp_epoch(model, batches, args.steps))
    d, h = statistics.median(dense), statistics.median(harp)
    print(
        f"{args.model}, {args.batches} batches of {args.batch}, PGD-{args.steps}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"dense PGD-AT epoch  {d:.3f} s")
    print(f"HARP pruning epoch  {h:.3f} s")
    print(f"ratio HARP/dense = {h / d:.2f}")


if __name__ == "__main__":
    main()
