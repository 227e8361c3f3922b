"""What a pruned network costs, HARP's hardware loss, and the initial per-layer keep rates.

- :func:`layer_costs` measures, per prunable layer, its weights and the multiply-accumulates one
  example needs per kept weight (output positions), from one forward pass.
- :func:`hardware_loss` is ``gamma * max(current / target - 1, 0)``: zero at or below the target.
- :func:`initial_rates` spreads a global density over layers: ``uniform`` (the same rate
  everywhere), ``erk`` (Erdos-Renyi-Kernel, Evci et al. 2020: rate proportional to
  ``sum(shape) / prod(shape)``) or ``lamp`` (layer-adaptive magnitude pruning, Lee et al. 2021:
  the global top weights by LAMP score).
- :func:`fit_counts` shrinks learned rates, if needed, until the kept cost is within the target.

Example:
    >>> net = nn.Sequential(nn.Linear(100, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> costs = layer_costs(net, torch.zeros(1, 100), ["0", "2"])
    >>> [c.weights for c in costs.values()]
    [1000, 20]
    >>> sorted(initial_rates("uniform", costs, density=0.1).values())
    [0.1, 0.1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.pruning.masking import kept_count, weight_of

__all__ = [
    "STRATEGIES",
    "Hardware",
    "LayerCost",
    "Strategy",
    "fit_counts",
    "hardware_loss",
    "initial_rates",
    "lamp_scores",
    "layer_costs",
]

Strategy = Literal["uniform", "lamp", "erk"]
Hardware = Literal["params", "flops"]
STRATEGIES: tuple[str, ...] = ("uniform", "lamp", "erk")


@dataclass(frozen=True)
class LayerCost:
    """One prunable layer: its weight count, weight shape and output positions per example.

    ``positions`` is how often each weight is used for one example (1 for a linear layer on a
    vector, ``H_out * W_out`` for a 2-D convolution), so its FLOPs are ``kept weights * positions``
    multiply-accumulates.
    """

    weights: int
    shape: tuple[int, ...]
    positions: int

    def cost(self, hardware: Hardware) -> int:
        """Cost of the dense layer: weights, or multiply-accumulates per example."""
        return self.weights * (self.positions if hardware == "flops" else 1)


def layer_costs(
    model: nn.Module, example: torch.Tensor, names: Sequence[str]
) -> dict[str, LayerCost]:
    """Measure :class:`LayerCost` of the layers ``names`` with one no-grad forward of ``example``.

    ``example`` is a batch (its first dimension is the batch); the model's train/eval flags are
    restored afterwards.
    """
    positions: dict[str, int] = {}
    handles = []
    for name in names:
        layer = model.get_submodule(name)

        def hook(module: nn.Module, _: object, out: torch.Tensor, name: str = name) -> None:
            per_example = out[0].numel()
            channels = out.shape[1] if out.ndim > 2 else out.shape[-1]
            positions[name] = max(1, per_example // max(1, channels))

        handles.append(layer.register_forward_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training
    costs = {}
    for name in names:
        weight = weight_of(model.get_submodule(name))
        costs[name] = LayerCost(weight.numel(), tuple(weight.shape), positions.get(name, 1))
    return costs


def hardware_loss(current: torch.Tensor, target: float, gamma: float) -> torch.Tensor:
    """HARP's hardware-aware loss ``gamma * max(current / target - 1, 0)``.

    Example:
        >>> hardware_loss(torch.tensor(90.0), 100.0, 0.01).item()
        0.0
        >>> round(hardware_loss(torch.tensor(150.0), 100.0, 0.01).item(), 6)
        0.005
    """
    return gamma * torch.relu(current / target - 1.0)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer: ``w_u^2 / sum of w_v^2 over weights v at least as large``.

    Example:
        >>> [round(v, 4) for v in lamp_scores(torch.tensor([1.0, 2.0])).tolist()]
        [0.2, 1.0]
    """
    squared = weight.detach().flatten().double() ** 2
    order = torch.argsort(squared)
    ascending = squared[order]
    # suffix sums: each weight divided by itself plus all larger ones
    suffix = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])
    scores = torch.empty_like(squared)
    scores[order] = ascending / suffix.clamp_min(1e-300)
    return scores.view_as(weight).float()


def _erk_rates(costs: Mapping[str, LayerCost], density: float) -> dict[str, float]:
    raw = {name: sum(c.shape) / c.weights for name, c in costs.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(c.weights for c in costs.values())
        budget -= sum(costs[name].weights for name in dense)
        free = {name: raw[name] * costs[name].weights for name in costs if name not in dense}
        scale = budget / sum(free.values()) if free else 0.0
        over = [name for name in free if raw[name] * scale > 1.0]
        if not over:
            return {name: 1.0 if name in dense else raw[name] * scale for name in costs}
        dense.update(over)


def _lamp_rates(
    costs: Mapping[str, LayerCost], density: float, weights: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    scores = {name: lamp_scores(weights[name]).flatten() for name in costs}
    everything = torch.cat(list(scores.values()))
    keep = max(1, round(density * everything.numel()))
    threshold = torch.topk(everything, keep).values.min()
    return {name: float((s >= threshold).sum()) / s.numel() for name, s in scores.items()}


def initial_rates(
    strategy: str,
    costs: Mapping[str, LayerCost],
    *,
    density: float,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Per-layer keep rates that keep a ``density`` share of all prunable weights.

    Args:
        strategy: ``uniform``, ``erk`` or ``lamp`` (``lamp`` needs ``weights``).
        costs: the layers (:func:`layer_costs`).
        density: share of weights to keep, in (0, 1).
        weights: each layer's weight tensor (LAMP scores are computed from magnitudes).

    Raises:
        UserError: unknown strategy.

    Example:
        >>> costs = {"a": LayerCost(100, (10, 10), 1), "b": LayerCost(1000, (10, 100), 1)}
        >>> rates = initial_rates("erk", costs, density=0.2)
        >>> round(sum(rates[n] * costs[n].weights for n in costs))
        220
    """
    if strategy == "uniform":
        return {name: density for name in costs}
    if strategy == "erk":
        return _erk_rates(costs, density)
    if strategy == "lamp":
        if weights is None:
            raise ValueError("the lamp strategy needs the layers' weights")
        return _lamp_rates(costs, density, weights)
    raise UserError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")


def fit_counts(
    rates: Mapping[str, float],
    costs: Mapping[str, LayerCost],
    *,
    target: float,
    hardware: Hardware,
    k_min: float,
) -> dict[str, int]:
    """Kept weights per layer: the learned ``rates``, shrunk towards ``k_min`` if over ``target``.

    All rates move by one factor ``t`` (``k_min + t * (rate - k_min)``), the largest ``t`` in
    [0, 1] whose kept cost is within ``target`` (found by bisection), so the rates' proportions
    are what was learned.

    Example:
        >>> costs = {"a": LayerCost(100, (10, 10), 1), "b": LayerCost(100, (10, 10), 1)}
        >>> fit_counts({"a": 0.5, "b": 0.3}, costs, target=40, hardware="params", k_min=0.01)
        {'a': 25, 'b': 15}
    """

    def counts_at(t: float) -> dict[str, int]:
        return {
            name: kept_count(k_min + t * (rate - k_min), costs[name].weights)
            for name, rate in rates.items()
        }

    def cost(counts: Mapping[str, int]) -> float:
        per = {name: (c.positions if hardware == "flops" else 1) for name, c in costs.items()}
        return float(sum(counts[name] * per[name] for name in counts))

    if cost(counts_at(1.0)) <= target:
        return counts_at(1.0)
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if cost(counts_at(middle)) <= target:
            low = middle
        else:
            high = middle
    return counts_at(low)
