"""Adversarially robust weight pruning (HARP) for any torch model; no RL or vision code here.

Modules:
    masking: learned scores and keep rates per Conv/Linear layer, the straight-through top-k mask.
    budget: parameter and FLOP costs, the hardware loss, initial rates (uniform, LAMP, ERK).
    objectives: PGD-AT, TRADES and MART losses (also used by ``sap-rl vision train``).
    harp: the pruning and fine-tuning loop, :func:`harp_prune`.
    export: masks in the weights file, counts of kept weights, parameters and FLOPs.

Example:
    >>> from sap_rl.pruning import HarpConfig
    >>> HarpConfig(sparsity=0.99).k_min
    0.0010000000000000009
"""

from __future__ import annotations

from sap_rl.pruning.budget import (
    STRATEGIES,
    LayerCost,
    fit_counts,
    hardware_loss,
    initial_rates,
    lamp_scores,
    layer_costs,
)
from sap_rl.pruning.export import (
    MASK_PREFIX,
    SparsityStats,
    check_masks,
    mask_tensors,
    sparsity_stats,
    split_masks,
)
from sap_rl.pruning.harp import EpochLog, HarpConfig, HarpResult, harp_prune
from sap_rl.pruning.masking import (
    MaskedLayer,
    TopKMask,
    keep_rate,
    kept_count,
    masked_layers,
    prunable_layers,
    unwrap_model,
    weight_of,
    wrap_model,
)
from sap_rl.pruning.objectives import DEFAULT_BETA, OBJECTIVES, adversarial_loss, check_objective

__all__ = [
    "DEFAULT_BETA",
    "MASK_PREFIX",
    "OBJECTIVES",
    "STRATEGIES",
    "EpochLog",
    "HarpConfig",
    "HarpResult",
    "LayerCost",
    "MaskedLayer",
    "SparsityStats",
    "TopKMask",
    "adversarial_loss",
    "check_masks",
    "check_objective",
    "fit_counts",
    "hardware_loss",
    "harp_prune",
    "initial_rates",
    "keep_rate",
    "kept_count",
    "lamp_scores",
    "layer_costs",
    "mask_tensors",
    "masked_layers",
    "prunable_layers",
    "sparsity_stats",
    "split_masks",
    "unwrap_model",
    "weight_of",
    "wrap_model",
]
