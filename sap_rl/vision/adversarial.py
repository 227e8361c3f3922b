"""Adversarial training steps: the SAP paper's ADV model, Kurakin et al.'s Algorithm 1, and the
standard robust objectives (PGD-AT, TRADES, MART).

- ``paper`` (Dhillon et al. 2018, "ADV"): every minibatch is 80% clean examples and 20% FGSM
  examples (eps = 2 pixel levels) made with the model as it was at the end of the *previous*
  epoch (a frozen copy); the loss is the plain mean over the minibatch. See :func:`paper_batch`.
- ``kurakin`` (Kurakin, Goodfellow & Bengio, ICLR 2017, Algorithm 1): in a minibatch of m, k
  examples are replaced by adversarial versions made with the *current* model (step l.l. by
  default, which avoids label leaking), each with its own eps drawn from a normal distribution
  N(0, sigma = 8) truncated to [0, 16]; the loss is
  ``(sum of clean losses + lambda * sum of adversarial losses) / ((m - k) + lambda * k)``
  with lambda = 0.3. See :func:`kurakin_loss`.
- ``pgd`` (Madry et al. 2018), ``trades`` (Zhang et al. 2019, beta = 6) and ``mart`` (Wang et
  al. 2020, beta = 5): every example is replaced by (``pgd``, ``mart``) or paired with
  (``trades``) a PGD example made with the current model, eps 8 and step 2 pixel levels by
  default. One implementation serves these modes and HARP pruning:
  :func:`sap_rl.pruning.objectives.adversarial_loss`, re-exported here.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> eps = truncated_normal_eps(1000, sigma=8.0, high=16.0, generator=g)
    >>> bool(eps.min() >= 0) and bool(eps.max() <= 16)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.pruning.objectives import OBJECTIVES, adversarial_loss

__all__ = [
    "OBJECTIVES",
    "adversarial_loss",
    "kurakin_loss",
    "mixed_loss",
    "paper_batch",
    "truncated_normal_eps",
]


def truncated_normal_eps(
    n: int, *, sigma: float, high: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``n`` values from N(0, sigma^2) truncated to [0, high] (inverse-CDF sampling).

    Args:
        n: number of draws.
        sigma: standard deviation of the underlying normal distribution (pixel levels).
        high: upper truncation bound (pixel levels); the lower bound is 0.

    Returns:
        A float32 tensor of shape (n,).

    Example:
        >>> truncated_normal_eps(3, sigma=8.0, high=0.0)
        tensor([0., 0., 0.])
    """
    if high <= 0:
        return torch.zeros(n)
    top = 0.5 * (1.0 + math.erf(high / (sigma * math.sqrt(2.0))))  # Phi(high / sigma)
    u = 0.5 + (top - 0.5) * torch.rand(n, generator=generator, dtype=torch.float64)
    return (sigma * torch.special.ndtri(u)).clamp(0.0, high).float()


def paper_batch(
    previous_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fraction: float = 0.2,
    eps: float = 2.0,
    use_labels: bool = True,
) -> tuple[torch.Tensor, int]:
    """Replace the first ``round(fraction * m)`` examples of a (shuffled) batch by FGSM examples.

    The examples are made with ``previous_model``, the frozen end-of-previous-epoch model.

    Returns:
        ``(mixed batch, number of adversarial examples)``; labels are unchanged.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> x, y = torch.full((10, 1, 2, 2), 100.0), torch.zeros(10, dtype=torch.long)
        >>> mixed, k = paper_batch(net, x, y)
        >>> k, bool(torch.equal(mixed[k:], x[k:]))
        (2, True)
    """
    from sap_rl.attacks import fgsm

    k = round(fraction * x.shape[0])
    if k == 0 or eps == 0:
        return x, k
    x_adv = fgsm(previous_model, x[:k], eps, target=y[:k] if use_labels else None)
    return torch.cat([x_adv, x[k:]]), k


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, k: int, loss_weight: float) -> torch.Tensor:
    """Kurakin et al.'s loss: the first ``k`` rows are adversarial and weighted by ``loss_weight``.

    ``(sum_clean CE + lambda * sum_adv CE) / ((m - k) + lambda * k)``.

    Example:
        >>> logits, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
        >>> round(mixed_loss(logits, y, 2, 0.3).item(), 4) == round(math.log(3), 4)
        True
    """
    losses = F.cross_entropy(logits, y, reduction="none")
    m = losses.shape[0]
    weights = torch.ones_like(losses)
    weights[:k] = loss_weight
    return (losses * weights).sum() / ((m - k) + loss_weight * k)


def kurakin_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    per_batch: int | None = None,
    loss_weight: float = 0.3,
    eps_sigma: float = 8.0,
    eps_max: float = 16.0,
    attack: str = "fgsm-ll",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Kurakin et al.'s Algorithm 1: build the mixed batch and return its loss.

    Args:
        model: the current model (in train mode; adversarial examples are made in eval mode and
            the mode is restored by the attack).
        x, y: a shuffled minibatch of m examples (float pixels, labels).
        per_batch: k, adversarial examples per minibatch (default m // 2).
        loss_weight: lambda.
        eps_sigma, eps_max: per-example eps ~ N(0, eps_sigma^2) truncated to [0, eps_max].
        attack: ``fgsm-ll`` (step l.l.) or ``fgsm`` (step on the true label).
        generator: draws the eps values.

    Returns:
        ``(loss, logits)`` where the first k rows of ``logits`` belong to adversarial examples.
    """
    from sap_rl.attacks import fgsm, fgsm_ll

    m = x.shape[0]
    k = min(m, m // 2 if per_batch is None else per_batch)
    if k > 0:
        eps = truncated_normal_eps(k, sigma=eps_sigma, high=eps_max, generator=generator)
        eps = eps.to(device=x.device, dtype=x.dtype)
        if attack == "fgsm-ll":
            x_adv = fgsm_ll(model, x[:k], eps)
        elif attack == "fgsm":
            x_adv = fgsm(model, x[:k], eps, target=y[:k])
        else:
            raise ValueError(f"unknown adversarial training attack {attack!r}")
        x = torch.cat([x_adv, x[k:]])
    logits = model(x)
    return mixed_loss(logits, y, k, loss_weight), logits
