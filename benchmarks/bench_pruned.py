"""Kept parameters, FLOPs and measured inference time of model folders (dense or pruned).

For each model folder: the non-zero Conv/Linear weights, all parameters minus the zero weights,
the multiply-accumulates of the Conv/Linear layers per image with all weights and with the
non-zero ones (what a sparse kernel would need), and the wall time of one no-grad prediction of
the whole test set, plain and with SAP-100 (100 Monte Carlo passes, as ``sap-rl vision evaluate``
predicts). Pruned weights are zeros in dense tensors and run on PyTorch's dense kernels, so the
time shows whether they save any. Models are timed interleaved, round by round; figures are
medians.

Usage::

    nice -n 10 python benchmarks/bench_pruned.py MODEL_DIR [MODEL_DIR ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from sap_rl.defenses import apply_defense
from sap_rl.pruning import sparsity_stats
from sap_rl.vision.data import load_dataset
from sap_rl.vision.evaluate import predict_proba
from sap_rl.vision.models import load_model


def _timed(model: torch.nn.Module, x: torch.Tensor, samples: int) -> float:
    start = time.perf_counter()
    predict_proba(model, x, samples=samples)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--examples", type=int, default=None, help="first N test images")
    parser.add_argument("--mc-samples", type=int, default=100, help="SAP passes per prediction")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 data root")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = [load_model(path) for path in args.models]
    data = load_dataset(loaded[0][1].dataset, args.data_root)
    x = data.x_test[: args.examples].float()
    sap = [apply_defense(model, "sap-100").eval() for model, _ in loaded]
    plain: list[list[float]] = [[] for _ in loaded]
    mc: list[list[float]] = [[] for _ in loaded]
    for i, (model, _) in enumerate(loaded):  # warm-up: first calls allocate and pick kernels
        _timed(model, x, 1)
        _timed(sap[i], x, args.mc_samples)
    for _ in range(args.rounds):
        for i, (model, _) in enumerate(loaded):
            plain[i].append(_timed(model, x, 1))
            mc[i].append(_timed(sap[i], x, args.mc_samples))
    print(
        f"{x.shape[0]} test images, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, medians of {args.rounds} rounds"
    )
    print(f"{'model':28s} {'kept weights':>14s} {'kept params':>12s} {'FLOPs (MAC)':>12s} "
          f"{'dense FLOPs':>12s} {'time (ms)':>10s} {'SAP-100 (ms)':>13s}")  # fmt: skip
    for i, (model, card) in enumerate(loaded):
        stats = sparsity_stats(model, x[:1])
        print(f"{card.name:28s} {stats.kept_weights:>14,d} {stats.kept_parameters:>12,d} "
              f"{stats.flops:>12,d} {stats.dense_flops:>12,d} "
              f"{1000 * statistics.median(plain[i]):>10.2f} "
              f"{1000 * statistics.median(mc[i]):>13.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
