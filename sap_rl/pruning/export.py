"""Pruned weights on disk: masks beside the weights in one safetensors file, and what they save.

A pruned model is an ordinary model whose pruned weights are real zeros. Its weights file also
holds each layer's mask as a bool tensor named ``mask/<layer>.weight`` (:func:`mask_tensors`), so
which weights were pruned stays known even where a kept weight happens to be zero. Loaders take
the masks out with :func:`split_masks` and check them with :func:`check_masks`; nothing is
unpickled.

Example:
    >>> net = nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     net.weight[:, :2] = 0
    >>> masks = {"weight": net.weight != 0}
    >>> state = {**net.state_dict(), **mask_tensors(masks)}
    >>> weights, loaded = split_masks(state)
    >>> sorted(weights), check_masks(weights, loaded, "demo")
    (['bias', 'weight'], None)
    >>> sparsity_stats(nn.Sequential(net), torch.zeros(1, 4)).kept_weights
    4
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.pruning.budget import layer_costs
from sap_rl.pruning.masking import PRUNABLE_TYPES, weight_of

__all__ = ["MASK_PREFIX", "SparsityStats", "check_masks", "mask_tensors", "sparsity_stats",
           "split_masks"]  # fmt: skip

MASK_PREFIX = "mask/"


def mask_tensors(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"mask/<name>": bool mask}`` for a weights file."""
    return {MASK_PREFIX + name: mask.detach().cpu().bool() for name, mask in masks.items()}


def split_masks(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a loaded weights file into ``(weights, masks)`` (mask names without the prefix)."""
    weights = {k: v for k, v in state.items() if not k.startswith(MASK_PREFIX)}
    masks = {k[len(MASK_PREFIX) :]: v.bool() for k, v in state.items() if k.startswith(MASK_PREFIX)}
    return weights, masks


def check_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], source: str
) -> None:
    """Every mask names a weight of its shape, and every masked-out weight is zero.

    Raises:
        UserError: a mask for a missing tensor, of another shape, or a pruned weight that is not
            zero (the file was edited or is not a pruned model).
    """
    for name, mask in masks.items():
        weight = weights.get(name)
        if weight is None:
            raise UserError(f"{source}: mask for {name!r}, which is not a weight of the model")
        if tuple(weight.shape) != tuple(mask.shape):
            raise UserError(f"{source}: mask {name!r} has shape {tuple(mask.shape)}, the weight "
                            f"{tuple(weight.shape)}")  # fmt: skip
        if bool((weight[~mask] != 0).any()):
            raise UserError(f"{source}: weights of {name!r} outside its mask are not zero; the "
                            "weights were modified")  # fmt: skip


@dataclass
class SparsityStats:
    """Kept weights, parameters and FLOPs of a model whose pruned weights are zeros.

    Attributes:
        prunable_weights: weights of the Conv/Linear layers.
        kept_weights: the non-zero ones among them.
        parameters: all parameters (biases and batch norm included).
        kept_parameters: ``parameters`` minus the zero Conv/Linear weights.
        dense_flops: multiply-accumulates of the Conv/Linear layers for one example, all weights.
        flops: the same with only the non-zero weights (what sparse kernels would need).
        layer_rates: share of weights kept per layer.
    """

    prunable_weights: int
    kept_weights: int
    parameters: int
    kept_parameters: int
    dense_flops: int
    flops: int
    layer_rates: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Share of the Conv/Linear weights that are zero."""
        return 1.0 - self.kept_weights / max(1, self.prunable_weights)


def sparsity_stats(model: nn.Module, example: torch.Tensor) -> SparsityStats:
    """Count :class:`SparsityStats` of ``model`` (zeros count as pruned) on an example batch."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    costs = layer_costs(model, example, names)
    kept = {n: int((weight_of(model.get_submodule(n)) != 0).sum()) for n in names}
    prunable = sum(c.weights for c in costs.values())
    parameters = sum(p.numel() for p in model.parameters())
    return SparsityStats(
        prunable_weights=prunable,
        kept_weights=sum(kept.values()),
        parameters=parameters,
        kept_parameters=parameters - (prunable - sum(kept.values())),
        dense_flops=sum(c.weights * c.positions for c in costs.values()),
        flops=sum(kept[n] * costs[n].positions for n in names),
        layer_rates={n: kept[n] / costs[n].weights for n in names},
    )
