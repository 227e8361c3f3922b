"""Adversarially robust weight pruning (HARP) for any torch model; no RL or vision code here.

Modules:
    masking: learned scores and keep rates per Conv/Linear layer, the straight-through top-k mask.
    budget: parameter and FLOP costs, the hardware loss, initial rates (uniform, LAMP, ERK).
    objectives: PGD-AT, TRADES and MART losses (also used by ``sap-rl vision train``).
    harp: the pruning and fine-tuning loop, :func:`harp_prune`.
    checkpoint: the checkpoint after each epoch that lets an interrupted run resume.
    export: masks in the weights file, counts of kept weights, parameters and FLOPs.
    cli: the flags ``sap-rl vision prune`` and ``sap-rl prune`` share.

Example:
    >>> from sap_rl.pruning import HarpConfig
    >>> HarpConfig(sparsity=0.99).k_min
    0.0010000000000000009
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): ``sap-rl --help`` imports the flag helpers in
# ``sap_rl.pruning.cli`` and should not pay for torch.

_EXPORTS = {
    "STRATEGIES": "budget",
    "LayerCost": "budget",
    "fit_counts": "budget",
    "hardware_loss": "budget",
    "initial_rates": "budget",
    "lamp_scores": "budget",
    "layer_costs": "budget",
    "MASK_PREFIX": "export",
    "SparsityStats": "export",
    "check_masks": "export",
    "mask_tensors": "export",
    "sparsity_stats": "export",
    "split_masks": "export",
    "EpochLog": "harp",
    "HarpConfig": "harp",
    "HarpResult": "harp",
    "HarpStopped": "harp",
    "harp_prune": "harp",
    "MaskedLayer": "masking",
    "TopKMask": "masking",
    "keep_rate": "masking",
    "kept_count": "masking",
    "masked_layers": "masking",
    "prunable_layers": "masking",
    "unwrap_model": "masking",
    "weight_of": "masking",
    "wrap_model": "masking",
    "DEFAULT_BETA": "objectives",
    "OBJECTIVES": "objectives",
    "adversarial_loss": "objectives",
    "check_objective": "objectives",
}

__all__ = [
    "DEFAULT_BETA",
    "MASK_PREFIX",
    "OBJECTIVES",
    "STRATEGIES",
    "EpochLog",
    "HarpConfig",
    "HarpResult",
    "HarpStopped",
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

if TYPE_CHECKING:
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
    from sap_rl.pruning.harp import EpochLog, HarpConfig, HarpResult, HarpStopped, harp_prune
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
    from sap_rl.pruning.objectives import (
        DEFAULT_BETA,
        OBJECTIVES,
        adversarial_loss,
        check_objective,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sap_rl.pruning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sap_rl.pruning.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
