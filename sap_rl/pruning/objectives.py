"""Adversarial training objectives: PGD-AT (Madry et al.), TRADES and MART, in pixel units.

One implementation serves HARP pruning (:mod:`sap_rl.pruning.harp`) and adversarial training
(``sap-rl vision train --adversarial pgd|trades|mart``):

- ``pgd`` (Madry et al. 2018): cross-entropy on PGD examples (random start) made with the current
  model: ``CE(f(x'), y)``.
- ``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x'))``, where ``x'``
  maximizes the KL term (PGD on the KL, from ``x`` plus small Gaussian noise); beta = 6.
- ``mart`` (Wang et al. 2020): boosted cross-entropy on PGD examples,
  ``CE(f(x'), y) - log(1 - max_{k != y} p_k(x'))``, plus
  ``beta * KL(p(x) || p(x')) * (1 - p_y(x))`` per example; beta = 5.

``eps`` and ``step_size`` are in pixel units [0, 255]: the usual CIFAR-10 eps of 8/255 on [0, 1]
images is ``eps=8``, step 2/255 is ``step_size=2``. Adversarial examples are made in eval mode
(batch-norm statistics untouched); the training loss is computed in the model's own mode.

Example:
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(5, 1, 2, 2) * 255, torch.tensor([0, 1, 2, 0, 1])
    >>> g = torch.Generator().manual_seed(0)
    >>> [adversarial_loss(o, net, x, y, eps=8, steps=2, step_size=4, generator=g)[0].ndim
    ...  for o in OBJECTIVES]
    [0, 0, 0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.errors import UserError

__all__ = [
    "DEFAULT_BETA",
    "OBJECTIVES",
    "adversarial_loss",
    "check_objective",
    "mart_loss",
    "trades_examples",
    "trades_loss",
]

OBJECTIVES: tuple[str, ...] = ("pgd", "trades", "mart")
#: The weight of the robustness term each paper uses (TRADES 1/lambda = 6, MART lambda = 5).
DEFAULT_BETA: dict[str, float] = {"pgd": 0.0, "trades": 6.0, "mart": 5.0}
#: TRADES' start: 0.001 * N(0, 1) on [0, 1] images, here in pixel units.
TRADES_START_SIGMA = 0.255


def check_objective(name: str) -> str:
    """``name`` if it is an objective, else a :class:`UserError` that lists them.

    Example:
        >>> check_objective("trades")
        'trades'
    """
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return name


def trades_examples(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES' inner maximization: PGD on ``KL(p(x) || p(x'))`` in the L-inf ball (pixel units).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.full((2, 1, 2, 2), 100.0)
        >>> bool((trades_examples(net, x, eps=4, steps=3, step_size=2) - x).abs().max() <= 4)
        True
    """
    from sap_rl.attacks import eval_mode

    with eval_mode(model):
        with torch.no_grad():
            clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        x_adv = (x + TRADES_START_SIGMA * noise.to(x.device)).clamp(0.0, 255.0).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 255.0)
    return x_adv.detach()


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """``CE(clean, y) + beta * KL(p_clean || p_adv)`` (KL averaged over the batch).

    Example:
        >>> z = torch.zeros(2, 3)
        >>> round(trades_loss(z, z, torch.tensor([0, 1]), 6.0).item(), 4)
        1.0986
    """
    kl = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean"
    )
    return F.cross_entropy(logits_clean, y) + beta * kl


def mart_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """MART: boosted CE on the adversarial logits plus the misclassification-weighted KL.

    Example:
        >>> z = torch.zeros(2, 2)
        >>> round(mart_loss(z, z, torch.tensor([0, 1]), 5.0).item(), 3)  # about log 2 + log 2
        1.386
    """
    probs_adv = F.softmax(logits_adv, dim=1)
    others = probs_adv.clone()
    others.scatter_(1, y[:, None], -1.0)
    runner_up = others.argmax(dim=1)
    # 1.0001: log(1 - p) stays finite when the runner-up's probability reaches 1
    boosted = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - probs_adv), runner_up)
    probs_clean = F.softmax(logits_clean, dim=1)
    true_prob = probs_clean.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(probs_adv + 1e-12), probs_clean, reduction="none").sum(dim=1)
    return boosted + beta * (kl * (1.0000001 - true_prob)).mean()


def adversarial_loss(
    objective: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    beta: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of ``objective`` on a batch, and the logits whose accuracy to report.

    Args:
        objective: ``pgd``, ``trades`` or ``mart``.
        model: the model being trained (in train mode).
        x: float batch in pixel units [0, 255]; y: labels.
        eps, steps, step_size: the inner attack (pixel units).
        beta: weight of the robustness term (default :data:`DEFAULT_BETA`).
        generator: the attack's random start.

    Returns:
        ``(loss, logits)``: adversarial logits for ``pgd`` and ``mart``, clean ones for
        ``trades``.
    """
    from sap_rl.attacks import pgd

    check_objective(objective)
    weight = DEFAULT_BETA[objective] if beta is None else beta
    if objective == "trades":
        x_adv = trades_examples(model, x, eps=eps, steps=steps, step_size=step_size,
                                generator=generator)  # fmt: skip
        logits_clean = model(x)
        return trades_loss(logits_clean, model(x_adv), y, weight), logits_clean
    x_adv = pgd(model, x, eps, steps=steps, step_size=step_size, random_start=True, target=y,
                generator=generator)  # fmt: skip
    logits_adv = model(x_adv)
    if objective == "pgd":
        return F.cross_entropy(logits_adv, y), logits_adv
    return mart_loss(model(x), logits_adv, y, weight), logits_adv
