"""Calibration of classifier confidence: expected calibration error and reliability diagrams.

With confidences ``c_i`` (probability of the predicted class) and correctness ``a_i`` in {0, 1},
split [0, 1] into ``n_bins`` equal-width bins ``B_b`` and compute (Guo et al. 2017)

    ECE = sum_b |B_b| / n * | mean_{i in B_b} a_i - mean_{i in B_b} c_i |.

A reliability diagram plots each bin's accuracy against its mean confidence; a perfectly
calibrated classifier lies on the diagonal.

Example:
    >>> conf = torch.tensor([0.9, 0.9, 0.6, 0.6])
    >>> correct = torch.tensor([1.0, 1.0, 1.0, 0.0])
    >>> round(expected_calibration_error(conf, correct, n_bins=10), 3)   # (2*0.1 + 2*0.1) / 4
    0.1
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from sap_rl.report import save_figure

__all__ = [
    "ReliabilityBins",
    "expected_calibration_error",
    "plot_reliability",
    "reliability_bins",
]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (bins with no example have count 0, NaN means).

    Attributes:
        edges: the ``n_bins + 1`` bin edges in [0, 1].
        confidence: mean confidence per bin.
        accuracy: mean correctness per bin.
        count: examples per bin.
    """

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]

    @property
    def ece(self) -> float:
        """Expected calibration error of these bins."""
        total = sum(self.count)
        if total == 0:
            return float("nan")
        return sum(
            n / total * abs(a - c)
            for n, a, c in zip(self.count, self.accuracy, self.confidence, strict=True)
            if n > 0
        )


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, *, n_bins: int = 15
) -> ReliabilityBins:
    """Bin ``confidence`` (values in [0, 1]) into ``n_bins`` equal-width bins (right-closed).

    Args:
        confidence: shape (N,), the probability of each predicted class.
        correct: shape (N,), 1 where the prediction is right, else 0.
        n_bins: number of bins.

    Example:
        >>> b = reliability_bins(torch.tensor([0.05, 1.0]), torch.tensor([0, 1]), n_bins=2)
        >>> b.count, b.accuracy
        ([1, 1], [0.0, 1.0])
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = confidence.detach().double().reshape(-1).clamp(0.0, 1.0)
    hit = correct.detach().double().reshape(-1)
    if conf.shape != hit.shape:
        raise ValueError("confidence and correct must have the same number of elements")
    # Bin b holds (b / n, (b + 1) / n]; a confidence of exactly 0 goes to the first bin.
    index = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, conf)
    hit_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, hit)
    denom = count.clamp(min=1).double()
    nan = torch.full((n_bins,), float("nan"), dtype=torch.float64)
    return ReliabilityBins(
        edges=[i / n_bins for i in range(n_bins + 1)],
        confidence=torch.where(count > 0, conf_sum / denom, nan).tolist(),
        accuracy=torch.where(count > 0, hit_sum / denom, nan).tolist(),
        count=count.tolist(),
    )


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, *, n_bins: int = 15
) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins (0 = perfectly calibrated).

    Example:
        >>> expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1, 1]))
        0.0
    """
    return reliability_bins(confidence, correct, n_bins=n_bins).ece


def plot_reliability(
    panels: Mapping[str, Mapping[str, ReliabilityBins]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> None:
    """Draw reliability diagrams: one panel per key of ``panels``, one curve per inner key.

    Args:
        panels: e.g. ``{"dense": {"clean": bins, "fgsm eps=8": bins}, "sap-100": {...}}``.
        path: PNG file, written atomically.
        title: optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: Sequence[str] = list(panels)
    cols = max(1, len(names))
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for label, bins in panels[name].items():
            points = [
                (c, a)
                for c, a, n in zip(bins.confidence, bins.accuracy, bins.count, strict=True)
                if n > 0
            ]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=f"{label} (ECE {bins.ece:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
