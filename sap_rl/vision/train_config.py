"""Typed training configuration for ``sap-rl vision train`` (loaded from ``configs/vision/*.yaml``).

Example:
    >>> cfg = from_dict(TrainConfig, {"dataset": "digits", "architecture": "digits_cnn",
    ...                               "schedule": [{"epochs": 3, "lr": 0.1}]})
    >>> cfg.total_epochs, cfg.lr_at(2), cfg.adversarial.mode
    (3, 0.1, 'none')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sap_rl.config import from_dict
from sap_rl.errors import UserError

__all__ = ["PRESETS", "AdversarialConfig", "LRStage", "TrainConfig", "default_config", "from_dict"]

AdversarialMode = Literal["none", "paper", "kurakin", "pgd", "trades", "mart"]


@dataclass
class LRStage:
    """``epochs`` epochs at learning rate ``lr`` (the schedule is a list of stages)."""

    epochs: int
    lr: float

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"a schedule stage needs epochs >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")


@dataclass
class AdversarialConfig:
    """Adversarial training settings (eps in pixel levels).

    Attributes:
        mode: ``none``; ``paper`` (the SAP paper's ADV model: each minibatch is ``fraction`` FGSM
            examples made with the previous epoch's model, the rest clean); ``kurakin``
            (Kurakin et al. 2017, Algorithm 1); ``pgd`` (Madry et al. 2018); ``trades`` (Zhang
            et al. 2019) or ``mart`` (Wang et al. 2020).
        fraction: ``paper``: share of each minibatch replaced by adversarial examples (0.2).
        eps: ``paper``: FGSM budget (2 pixel levels).
        labels: ``paper``: FGSM moves away from the true ``label`` or from the model's
            ``prediction``.
        per_batch: ``kurakin``: k adversarial examples per minibatch of m; ``null`` means m / 2
            (Kurakin et al. used k = 16 of m = 32).
        loss_weight: ``kurakin``: lambda, the relative weight of adversarial examples (0.3).
        eps_sigma: ``kurakin``: sigma of the normal distribution eps is drawn from (8).
        eps_max: ``kurakin``: eps is truncated to [0, eps_max] (16).
        attack: ``kurakin``: ``fgsm-ll`` (step l.l., avoids label leaking) or ``fgsm``.
        pgd_eps: ``pgd``, ``trades``, ``mart``: the inner attack's budget (8 pixel levels, i.e.
            the usual 8/255 on [0, 1] images).
        pgd_steps: ``pgd``, ``trades``, ``mart``: iterations of the inner attack (10).
        pgd_step_size: ``pgd``, ``trades``, ``mart``: its step (2 pixel levels).
        beta: ``trades``, ``mart``: weight of the robustness term; ``null`` is the paper's (TRADES
            6, MART 5).

    ``pgd`` is Madry et al.'s PGD adversarial training, ``trades`` Zhang et al.'s and ``mart``
    Wang et al.'s objective (:mod:`sap_rl.pruning.objectives`, shared with HARP pruning).
    """

    mode: AdversarialMode = "none"
    fraction: float = 0.2
    eps: float = 2.0
    labels: Literal["label", "prediction"] = "label"
    per_batch: int | None = None
    loss_weight: float = 0.3
    eps_sigma: float = 8.0
    eps_max: float = 16.0
    attack: Literal["fgsm-ll", "fgsm"] = "fgsm-ll"
    pgd_eps: float = 8.0
    pgd_steps: int = 10
    pgd_step_size: float = 2.0
    beta: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"adversarial.fraction must be in [0, 1], got {self.fraction}")
        if self.eps < 0 or self.eps_max < 0 or self.eps_sigma <= 0:
            raise ValueError("adversarial eps, eps_max must be >= 0 and eps_sigma > 0")
        if self.per_batch is not None and self.per_batch < 0:
            raise ValueError(f"adversarial.per_batch must be >= 0, got {self.per_batch}")
        if self.loss_weight < 0:
            raise ValueError(f"adversarial.loss_weight must be >= 0, got {self.loss_weight}")
        if self.pgd_eps < 0 or self.pgd_step_size < 0:
            raise ValueError("adversarial.pgd_eps and pgd_step_size must be >= 0")
        if not 1 <= self.pgd_steps <= 1000:
            raise ValueError(f"adversarial.pgd_steps must be in 1..1000, got {self.pgd_steps}")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"adversarial.beta must be >= 0, got {self.beta}")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` beside the model.

    Attributes:
        dataset: ``digits`` or ``cifar10``.
        architecture: ``resnet20`` or ``digits_cnn``.
        schedule: learning-rate stages, run in order (the SAP paper: 100 epochs at 0.5, 30 at
            0.05, 20 at 0.005).
        batch_size: minibatch size m.
        momentum, weight_decay, nesterov: SGD settings.
        augment: random crop with the data set's padding (and flip where it makes sense).
        seed: seeds initialization, shuffling, augmentation and adversarial draws.
        eval_batch_size: batch size for test-set accuracy.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        adversarial: adversarial training settings.
    """

    dataset: Literal["digits", "cifar10"]
    architecture: str
    schedule: list[LRStage]
    batch_size: int = 512
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    augment: bool = True
    seed: int = 0
    eval_batch_size: int = 1000
    checkpoint_every: int = 1
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("schedule needs at least one stage")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        per_batch = self.adversarial.per_batch
        if per_batch is not None and per_batch > self.batch_size:
            raise ValueError(
                f"adversarial.per_batch ({per_batch}) exceeds batch_size ({self.batch_size})"
            )

    @property
    def total_epochs(self) -> int:
        """Sum of the schedule's epochs."""
        return sum(stage.epochs for stage in self.schedule)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch``."""
        end = 0
        for stage in self.schedule:
            end += stage.epochs
            if epoch < end:
                return stage.lr
        return self.schedule[-1].lr


#: Built-in configurations, identical to ``configs/vision/<dataset>.yaml`` (a test checks this).
PRESETS: dict[str, dict[str, Any]] = {
    # The SAP paper's CIFAR-10 recipe: ResNet-20, SGD (momentum 0.9, weight decay 1e-4), batch
    # 512, lr 0.5 for 100 epochs, 0.05 for 30, 0.005 for 20.
    "cifar10": {
        "dataset": "cifar10",
        "architecture": "resnet20",
        "batch_size": 512,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": [
            {"epochs": 100, "lr": 0.5},
            {"epochs": 30, "lr": 0.05},
            {"epochs": 20, "lr": 0.005},
        ],
    },
    # A short recipe of the same kind for the built-in digits (seconds per epoch on a CPU).
    "digits": {
        "dataset": "digits",
        "architecture": "digits_cnn",
        "batch_size": 64,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": [
            {"epochs": 20, "lr": 0.05},
            {"epochs": 8, "lr": 0.005},
            {"epochs": 4, "lr": 0.0005},
        ],
    },
}


def default_config(dataset: str) -> TrainConfig:
    """The built-in :data:`PRESETS` configuration of ``dataset``.

    Example:
        >>> default_config("cifar10").total_epochs
        150
    """
    if dataset not in PRESETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(PRESETS)}")
    return from_dict(TrainConfig, PRESETS[dataset])
