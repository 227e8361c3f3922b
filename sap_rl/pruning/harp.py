"""HARP (Zhao and Wressnegger, ICLR 2023): prune a trained model adversarially, learning how much
to prune in each layer, for any torch model.

:func:`harp_prune`, top to bottom:

1. pick the Conv/Linear layers (:func:`~sap_rl.pruning.masking.prunable_layers`), measure their
   weights and FLOPs on one batch, and spread the target density over them (``uniform``, ``lamp``
   or ``erk``);
2. **prune** (``prune_epochs``): the weights are frozen; each layer's importance scores and
   keep-rate score learn, by SGD (or Adam) with a cosine schedule, to minimize the adversarial
   objective (``pgd``, ``trades`` or ``mart``) plus the hardware loss
   ``gamma * max(kept cost / target - 1, 0)`` on parameters or FLOPs; ``gamma`` is multiplied by
   ``gamma_growth`` after each epoch that ends over the target;
3. fix the masks: the learned rates, shrunk together if they still exceed the target
   (:func:`~sap_rl.pruning.budget.fit_counts`), keep the top weights by score;
4. **fine-tune** (``finetune_epochs``): the kept weights (and the other parameters) learn under
   the same objective;
5. export: the layers are plain again, with pruned weights set to zero; the masks are returned.

The data is a function ``batches(epoch)`` yielding ``(x, y)`` pairs, so one loop serves images
(labels) and agents (the dense agent's actions on its own frames).

Example:
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> x = torch.rand(64, 1, 4, 4) * 255
    >>> y = (x.mean(dim=(1, 2, 3)) > 127).long()
    >>> cfg = HarpConfig(sparsity=0.9, prune_epochs=1, finetune_epochs=1, steps=1, eps=2,
    ...                  step_size=2)
    >>> result = harp_prune(net, lambda epoch: [(x, y)], cfg)
    >>> result.stats.sparsity >= 0.9, sorted(result.masks)
    (True, ['1.weight', '3.weight'])
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.io import load_optimizer
from sap_rl.pruning.budget import (
    Hardware,
    LayerCost,
    fit_counts,
    hardware_loss,
    initial_rates,
    layer_costs,
)
from sap_rl.pruning.export import SparsityStats, sparsity_stats
from sap_rl.pruning.masking import (
    MaskedLayer,
    kept_count,
    masked_layers,
    prunable_layers,
    unwrap_model,
    weight_of,
    wrap_model,
)
from sap_rl.pruning.objectives import adversarial_loss

if TYPE_CHECKING:
    from sap_rl.pruning.checkpoint import HarpCheckpoint, Resumed

__all__ = ["Batches", "EpochLog", "HarpConfig", "HarpResult", "HarpStopped", "harp_prune"]

logger = logging.getLogger(__name__)

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class HarpConfig:
    """HARP's settings (eps and step size in pixel units [0, 255]).

    Attributes:
        sparsity: share of the prunable weights (or FLOPs) to remove, in (0, 1).
        objective: ``pgd`` (PGD-AT), ``trades`` or ``mart``.
        strategy: initial per-layer rates: ``uniform``, ``lamp`` or ``erk``.
        hardware: what the target constrains: ``params`` (kept weights) or ``flops``.
        prune_epochs: epochs learning scores and rates (the paper: 20).
        finetune_epochs: epochs fine-tuning the kept weights (the paper: 100).
        lr: initial learning rate of the scores and rates (cosine schedule).
        finetune_lr: initial learning rate of the fine-tuning (cosine schedule).
        optimizer: ``sgd`` (the paper's, with ``momentum``) or ``adam`` (for networks trained
            with Adam and no batch norm, such as DQN's Q-networks, which SGD at the paper's
            rates throws off; ``momentum`` is then unused).
        momentum, weight_decay: SGD settings (``weight_decay`` applies to Adam too; never on
            the rate scores).
        gamma: initial weight of the hardware loss (the paper: 0.01).
        gamma_growth: factor applied to gamma after an epoch that ends over the target.
        k_min_factor: a layer keeps at least ``k_min_factor * (1 - sparsity)`` of its weights.
        eps, steps, step_size: the objective's inner PGD attack.
        beta: weight of the robustness term (default: TRADES 6, MART 5).
        exclude: glob patterns of layer names to leave dense.
        seed: seeds the attacks' random starts.
    """

    sparsity: float
    objective: Literal["pgd", "trades", "mart"] = "pgd"
    strategy: Literal["uniform", "lamp", "erk"] = "uniform"
    hardware: Literal["params", "flops"] = "params"
    prune_epochs: int = 20
    finetune_epochs: int = 100
    lr: float = 0.1
    finetune_lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.01
    gamma_growth: float = 2.0
    k_min_factor: float = 0.1
    eps: float = 8.0
    steps: int = 10
    step_size: float = 2.0
    beta: float | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.prune_epochs < 0 or self.finetune_epochs < 0:
            raise ValueError("prune_epochs and finetune_epochs must be >= 0")
        if not (self.lr > 0 and self.finetune_lr > 0):
            raise ValueError("learning rates must be > 0")
        if self.gamma < 0 or self.gamma_growth < 1:
            raise ValueError("gamma must be >= 0 and gamma_growth >= 1")
        if not 0.0 < self.k_min_factor < 1.0:
            raise ValueError(f"k_min_factor must be in (0, 1), got {self.k_min_factor}")
        if self.eps < 0 or self.step_size < 0 or self.steps < 1:
            raise ValueError("eps and step_size must be >= 0 and steps >= 1")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {self.optimizer!r}")

    @property
    def density(self) -> float:
        """Share of weights (or FLOPs) to keep."""
        return 1.0 - self.sparsity

    @property
    def k_min(self) -> float:
        """Smallest per-layer keep rate."""
        return self.k_min_factor * self.density


@dataclass
class EpochLog:
    """One epoch of :func:`harp_prune` (``phase`` is ``prune`` or ``finetune``)."""

    phase: str
    epoch: int
    lr: float
    loss: float
    accuracy: float
    kept: float
    gamma: float
    seconds: float


@dataclass
class HarpResult:
    """What :func:`harp_prune` returns.

    Attributes:
        model: the pruned model (plain layers, pruned weights zero, eval mode, on the CPU).
        masks: ``{"<layer>.weight": bool mask}`` of the pruned layers.
        stats: kept weights, parameters and FLOPs (:func:`~sap_rl.pruning.export.sparsity_stats`).
        dense_stats: the same for the model before pruning.
        history: one :class:`EpochLog` per epoch.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    stats: SparsityStats
    dense_stats: SparsityStats
    history: list[EpochLog]

    def card(self, config: HarpConfig, source: str) -> dict[str, Any]:
        """The ``pruning`` section of a model or agent card: source, settings and savings."""
        return {
            "method": "harp",
            "pruned_from": source,
            "sparsity": config.sparsity,
            "achieved_sparsity": self.stats.sparsity,
            "objective": config.objective,
            "strategy": config.strategy,
            "hardware": config.hardware,
            "prunable_weights": self.stats.prunable_weights,
            "kept_weights": self.stats.kept_weights,
            "parameters": self.stats.parameters,
            "kept_parameters": self.stats.kept_parameters,
            "dense_flops": self.stats.dense_flops,
            "flops": self.stats.flops,
            "layer_rates": self.stats.layer_rates,
            "settings": asdict(config),
        }


def _generator(seed: int, phase: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, phase, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _cosine(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def _kept_cost(
    wrappers: dict[str, MaskedLayer], costs: dict[str, LayerCost], hardware: Hardware
) -> torch.Tensor:
    """Differentiable kept cost: sum over layers of keep rate times the dense layer's cost."""
    return sum(
        (w.rate() * costs[name].cost(hardware) for name, w in wrappers.items()),
        torch.zeros(()),
    )


def _actual_cost(
    wrappers: dict[str, MaskedLayer], costs: dict[str, LayerCost], hardware: Hardware
) -> float:
    """Kept cost of the masks the current rates give (whole weights, as the forward pass uses)."""
    total = 0.0
    for name, w in wrappers.items():
        per = costs[name].cost(hardware) / costs[name].weights
        total += kept_count(float(w.rate().detach()), w.numel) * per
    return total


class HarpStopped(Exception):
    """:func:`harp_prune` stopped early because ``stop()`` said so; its checkpoint continues it.

    Attributes:
        epochs_done: epochs finished and saved (pruning and fine-tuning together).
        epochs: epochs of the whole run.
    """

    def __init__(self, epochs_done: int, epochs: int) -> None:
        super().__init__(f"stopped after epoch {epochs_done} of {epochs}")
        self.epochs_done, self.epochs = epochs_done, epochs


def harp_prune(
    model: nn.Module,
    batches: Batches,
    config: HarpConfig,
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochLog], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: dict[str, Any] | None = None,
    stop: Callable[[], bool] | None = None,
) -> HarpResult:
    """Prune a copy of ``model`` with HARP; the model passed in is not changed.

    With ``checkpoint``, the complete state is saved there after every epoch
    (:mod:`sap_rl.pruning.checkpoint`: safetensors and JSON), and a run that finds a checkpoint
    there continues from it: on the CPU the result is bitwise that of an uninterrupted run, as
    long as ``batches(epoch)`` depends only on ``epoch`` and on what ``checkpoint_key`` records.
    The global torch RNG state is part of the checkpoint and is restored on resume.

    Args:
        model: a trained model mapping float pixel-unit input to logits (or Q-values).
        batches: ``batches(epoch)`` yields ``(x, y)`` training batches for that epoch
            (0-based over pruning and fine-tuning epochs together); ``y`` are class indices.
        config: the settings.
        device: where to compute.
        on_epoch: called after every epoch (progress, history files), before its checkpoint.
        checkpoint: folder of the run's checkpoint (none: no checkpoints).
        checkpoint_key: JSON settings ``batches`` depends on (batch size, data); a checkpoint
            saved with other ones, other ``config`` or another ``model`` is refused.
        stop: asked after each saved epoch; ``True`` ends the run with :class:`HarpStopped`
            (a time limit). Never asked after the last epoch.

    Raises:
        UserError: the model has no prunable layers (after ``config.exclude``), or the
            checkpoint is damaged or of another run.
        HarpStopped: ``stop()`` returned ``True``.

    Example:
        >>> import tempfile
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> data = lambda epoch: [(torch.rand(8, 1, 2, 2) * 255, torch.zeros(8).long())]
        >>> cfg = HarpConfig(sparsity=0.5, prune_epochs=1, finetune_epochs=1, steps=1)
        >>> folder = tempfile.mkdtemp()
        >>> harp_prune(net, data, cfg, checkpoint=folder, stop=lambda: True)
        Traceback (most recent call last):
        ...
        sap_rl.pruning.harp.HarpStopped: stopped after epoch 1 of 2
        >>> len(harp_prune(net, data, cfg, checkpoint=folder).history)  # resumed: epoch 2 only
        2
    """
    from sap_rl.pruning.checkpoint import HarpCheckpoint, model_fingerprint, restore_rng

    dev = torch.device(device)
    saver = None
    if checkpoint is not None:
        saver = HarpCheckpoint(checkpoint, config, model_fingerprint(model), checkpoint_key)
    resumed = saver.load() if saver is not None else None
    model = copy.deepcopy(model).to(dev)
    layers = prunable_layers(model, config.exclude)
    example = _first_batch(batches)[0].to(dev)
    dense_stats = sparsity_stats(model, example)
    costs = layer_costs(model, example, list(layers))
    weights = {name: weight_of(layer).detach() for name, layer in layers.items()}
    rates = initial_rates(config.strategy, costs, density=config.density, weights=weights)
    k_min = config.k_min
    wrap_model(model, {n: min(1.0, max(k_min, r)) for n, r in rates.items()}, k_min=k_min)
    wrappers = masked_layers(model)
    target = config.density * sum(c.cost(config.hardware) for c in costs.values())
    history: list[EpochLog] = []
    total = config.prune_epochs + config.finetune_epochs
    done, gamma = 0, config.gamma
    counts: dict[str, int] | None = None
    if resumed is not None:
        done, gamma, counts = resumed.epochs_done, resumed.gamma, resumed.counts
        history = _restore(model, wrappers, resumed, saver, total)
        restore_rng(resumed.tensors)
        logger.info("resuming HARP after epoch %d of %d from %s", done, total, checkpoint)

    def finish(epochs_done: int, optimizer: torch.optim.Optimizer) -> None:
        if saver is not None:
            modes: dict[str, str] = {name: w.mode for name, w in wrappers.items()}
            saver.save(epochs_done=epochs_done, gamma=gamma, model=model, optimizer=optimizer,
                       modes=modes, counts=counts, history=history)  # fmt: skip
        if stop is not None and epochs_done < total and stop():
            raise HarpStopped(epochs_done, total)

    def record(log: EpochLog) -> None:
        history.append(log)
        logger.info("%s epoch %d: %s", log.phase, log.epoch, log)
        if on_epoch is not None:
            on_epoch(log)

    # 2. Prune: scores and rates (and batch norm) learn over frozen weights.
    if done < config.prune_epochs:
        scores = [w.scores for w in wrappers.values()]
        rate_scores = [w.rate_score for w in wrappers.values()]
        learned = {id(p) for p in [*scores, *rate_scores]}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in learned]
        optimizer = _optimizer(
            config,
            [
                {"params": scores + others, "weight_decay": config.weight_decay},
                {"params": rate_scores, "weight_decay": 0.0},
            ],
            config.lr,
        )
        if resumed is not None:
            load_optimizer(resumed.optimizer, optimizer)
        for epoch in range(done, config.prune_epochs):
            lr = _cosine(config.lr, epoch, config.prune_epochs)
            start = time.perf_counter()

            def extra(gamma: float = gamma) -> torch.Tensor:
                return hardware_loss(_kept_cost(wrappers, costs, config.hardware).to(dev), target,
                                     gamma)  # fmt: skip

            loss, acc = _epoch(model, optimizer, batches(epoch), config, lr, dev,
                               _generator(config.seed, 0, epoch), extra)  # fmt: skip
            kept = _actual_cost(wrappers, costs, config.hardware) / target * config.density
            record(EpochLog("prune", epoch + 1, lr, loss, acc, kept, gamma,
                            time.perf_counter() - start))  # fmt: skip
            if kept > config.density:
                gamma *= config.gamma_growth
            finish(epoch + 1, optimizer)

    # 3. Fix the masks within the target (a run resumed while fine-tuning has them fixed).
    if counts is None:
        learned_rates = {name: float(w.rate().detach()) for name, w in wrappers.items()}
        counts = fit_counts(learned_rates, costs, target=target, hardware=config.hardware,
                            k_min=k_min)  # fmt: skip
        for name, w in wrappers.items():
            w.fix(counts[name])

    # 4. Fine-tune the kept weights.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(config, [{"params": params, "weight_decay": config.weight_decay}],
                           config.finetune_lr)  # fmt: skip
    if resumed is not None and done > config.prune_epochs:
        load_optimizer(resumed.optimizer, optimizer)
    for epoch in range(max(0, done - config.prune_epochs), config.finetune_epochs):
        lr = _cosine(config.finetune_lr, epoch, config.finetune_epochs)
        start = time.perf_counter()
        loss, acc = _epoch(model, optimizer, batches(config.prune_epochs + epoch), config, lr,
                           dev, _generator(config.seed, 1, epoch), None)  # fmt: skip
        record(EpochLog("finetune", epoch + 1, lr, loss, acc,
                        _actual_cost(wrappers, costs, config.hardware) / target * config.density,
                        gamma, time.perf_counter() - start))  # fmt: skip
        finish(config.prune_epochs + epoch + 1, optimizer)

    # 5. Export.
    masks = unwrap_model(model)
    model = model.cpu().eval()
    stats = sparsity_stats(model, example.cpu())
    return HarpResult(model, masks, stats, dense_stats, history)


def _restore(
    model: nn.Module,
    wrappers: dict[str, MaskedLayer],
    resumed: Resumed,
    saver: HarpCheckpoint | None,
    total: int,
) -> list[EpochLog]:
    """Load a checkpoint's tensors and layer modes into the freshly wrapped ``model``."""
    folder = saver.folder if saver is not None else Path(".")
    fix = f"delete {folder} to start over"
    if resumed.epochs_done > total:
        raise UserError(f"{folder}: the checkpoint has more epochs than the run; {fix}")
    tensors = {k: v for k, v in resumed.tensors.items() if not k.startswith("rng/")}
    try:
        model.load_state_dict(tensors, strict=True)
        if set(resumed.modes) != set(wrappers):
            raise ValueError("the checkpoint's layers are not the model's")
        for name, wrapper in wrappers.items():
            mode = resumed.modes[name]
            if mode not in ("learn", "fixed"):
                raise ValueError(f"layer {name}: mode {mode!r}")
            wrapper.set_mode(mode)  # type: ignore[arg-type]
        return [EpochLog(**row) for row in resumed.history]
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(
            f"{folder}: the checkpoint does not fit this model ({str(err).splitlines()[0]}); {fix}"
        ) from None


def _optimizer(
    config: HarpConfig, groups: list[dict[str, Any]], lr: float
) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def _first_batch(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    for batch in batches(0):
        return batch
    raise ValueError("batches(0) yielded no batch")


def _epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: HarpConfig,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    extra: Callable[[], torch.Tensor] | None,
) -> tuple[float, float]:
    """One pass of the objective (plus ``extra()``, the hardware loss); mean loss and accuracy."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in batches:
        xb, yb = xb.to(device).float(), yb.to(device)
        loss, logits = adversarial_loss(
            config.objective, model, xb, yb, eps=config.eps, steps=config.steps,
            step_size=config.step_size, beta=config.beta, generator=generator,
        )  # fmt: skip
        total = loss + extra() if extra is not None else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if not torch.isfinite(total):
            raise UserError(f"HARP diverged (loss {total.item()}); lower the learning rate")
        loss_sum += float(loss.detach()) * yb.shape[0]
        correct += int((logits.argmax(dim=1) == yb).sum())
        seen += yb.shape[0]
    return loss_sum / max(1, seen), correct / max(1, seen)
