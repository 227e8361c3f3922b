"""Gradient attacks in pixel units: FGSM and PGD, with cross-entropy or margin loss and restarts.

- :func:`fgsm` — Goodfellow et al. 2015: ``x + eps * sign(grad_x CE(model(x), y))``.
- :func:`pgd` — projected gradient descent / basic iterative method (Kurakin et al. 2017, Madry
  et al. 2018), optional random start, cross-entropy or Carlini-Wagner margin loss
  (``loss="cw"``), and random restarts that keep each example's best run.
- :func:`fgsm_ll`, :func:`pgd_ll` — Kurakin et al.'s "step l.l." and "iter l.l.": descend the
  loss of the least-likely class.
- :func:`input_gradient`, :func:`predict`, :func:`eval_mode` — the pieces they share.

See :mod:`sap_rl.attacks` for the conventions (pixel units, labels, EOT, model modes).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> x = torch.randint(0, 256, (2, 1, 4, 4)).float()
    >>> x_adv = fgsm(model, x, eps=4.0)
    >>> bool((x_adv - x).abs().max() <= 4.0) and bool(x_adv.min() >= 0) and bool(x_adv.max() <= 255)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.sap import deterministic, forward_copies, mc_average, stochastic_modules

__all__ = [
    "GRADIENT_LOSSES",
    "PIXEL_MAX",
    "PIXEL_MIN",
    "eval_mode",
    "fgsm",
    "fgsm_ll",
    "input_gradient",
    "margin_loss",
    "pgd",
    "pgd_ll",
    "predict",
]

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0

Eps = float | torch.Tensor
GradientLoss = Literal["ce", "cw"]
#: Losses :func:`pgd` can ascend: cross-entropy, and Carlini and Wagner's margin.
GRADIENT_LOSSES: tuple[GradientLoss, ...] = ("ce", "cw")


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, stochastic: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (optionally with its stochastic layers off), then restore it.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        if stochastic:
            yield model
        else:
            with deterministic(model):
                yield model
    finally:
        for module, training in flags:
            module.training = training


def predict(
    model: nn.Module, x: torch.Tensor, *, samples: int = 1, max_batch: int | None = None
) -> torch.Tensor:
    """Mean model output over ``samples`` stochastic passes, without gradient (shape (B, C)).

    Example:
        >>> predict(nn.Linear(3, 2), torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """
    with torch.no_grad():
        return _mean_output(model, x, samples, max_batch)


def _mean_output(
    model: nn.Module, x: torch.Tensor, samples: int, max_batch: int | None
) -> torch.Tensor:
    return mc_average(model, x, samples, max_batch=max_batch).reshape(x.shape[0], -1)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini and Wagner's margin ``max_{j != y} z_j - z_y`` per example (shape (B,)).

    Positive exactly where the model's top class is not ``y``; unlike cross-entropy it does not
    saturate once the label's probability is small, so ascending it keeps pushing the runner-up
    class up rather than the label's softmax down (Carlini and Wagner 2017, their f6 without the
    confidence cap).

    Example:
        >>> margin_loss(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([0])).tolist()
        [-1.0]
    """
    if logits.shape[-1] < 2:
        raise ValueError("the margin (cw) loss needs at least 2 classes")
    z = logits.float()
    own = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return others - own


def _per_example_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "cw":
        return margin_loss(logits, labels)
    return F.cross_entropy(logits.float(), labels, reduction="none")


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 1,
    max_batch: int | None = None,
    loss: GradientLoss = "ce",
) -> torch.Tensor:
    """Gradient w.r.t. ``x`` of the loss ``loss(model(x), labels)``, averaged over samples.

    ``loss`` is ``"ce"`` (cross-entropy) or ``"cw"`` (:func:`margin_loss`). The loss is summed
    over the batch (each example's gradient is its own loss's gradient) and averaged over
    ``samples`` stochastic passes, computed in chunks of at most ``max_batch`` rows (default: all
    ``samples * B`` rows in one pass).

    Example:
        >>> g = input_gradient(nn.Linear(3, 2), torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
        >>> g.shape
        torch.Size([4, 3])
    """
    if loss not in GRADIENT_LOSSES:
        raise ValueError(f"loss must be one of {GRADIENT_LOSSES}, got {loss!r}")
    batch = x.shape[0]
    per_chunk = samples if max_batch is None else max(1, max_batch // max(batch, 1))
    grad = torch.zeros_like(x)
    done = 0
    while done < samples:
        n = min(per_chunk, samples - done)
        xs = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward_copies(model, xs, n).reshape(n * batch, -1)
            if loss == "cw":
                total = margin_loss(logits, labels.repeat(n)).sum()
            else:
                total = F.cross_entropy(logits.float(), labels.repeat(n), reduction="sum")
            (part,) = torch.autograd.grad(total, xs)
        grad += part
        done += n
    return grad / samples


def _mean_loss(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    samples: int,
    max_batch: int | None,
    loss: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss averaged over ``samples`` passes, and the mean output's top class."""
    batch = x.shape[0]
    per_chunk = samples if max_batch is None else max(1, max_batch // max(batch, 1))
    total = torch.zeros(batch, device=x.device)
    scores: torch.Tensor | None = None
    done = 0
    with torch.no_grad():
        while done < samples:
            n = min(per_chunk, samples - done)
            logits = forward_copies(model, x, n).reshape(n * batch, -1)
            total += _per_example_loss(logits, labels.repeat(n), loss).reshape(n, batch).sum(0)
            part = logits.float().reshape(n, batch, -1).sum(0)
            scores = part if scores is None else scores + part
            done += n
    assert scores is not None
    return total / samples, scores.argmax(dim=1)


def _validate(x: torch.Tensor, eps: Eps, samples: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"attacks need a float batch in pixel units [0, 255], got {kind}; use x.float()"
        )
    if x.ndim < 2:
        raise ValueError(f"attacks need a batch of shape (B, ...), got shape {tuple(x.shape)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.ndim not in (0, 1) or (eps_t.ndim == 1 and eps_t.shape[0] != x.shape[0]):
        raise ValueError(f"eps must be a number or a tensor of shape ({x.shape[0]},)")
    if not bool(torch.isfinite(eps_t).all()) or bool((eps_t < 0).any()):
        raise ValueError(f"eps must be finite and >= 0 (pixel units), got {eps}")
    return eps_t.reshape(-1, *([1] * (x.ndim - 1))) if eps_t.ndim == 1 else eps_t


def _labels(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None,
    samples: int,
    max_batch: int | None,
    least_likely: bool,
) -> torch.Tensor:
    if target is not None:
        target = torch.as_tensor(target, device=x.device).long().reshape(-1)
        if target.shape[0] != x.shape[0]:
            raise ValueError(f"target must have one label per example ({x.shape[0]})")
        return target
    scores = predict(model, x, samples=samples, max_batch=max_batch)
    return scores.argmin(dim=1) if least_likely else scores.argmax(dim=1)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    return x_adv.clamp(PIXEL_MIN, PIXEL_MAX)


def _step_attack(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    target: torch.Tensor | None,
    samples: int,
    max_batch: int | None,
    least_likely: bool,
    stochastic: bool,
) -> torch.Tensor:
    eps_t = _validate(x, eps, samples)
    with eval_mode(model, stochastic=stochastic):
        samples = _draws_needed(model, samples)
        if target is None and samples == 1 and not _is_stochastic(model):
            grad = _gradient_at_own_prediction(model, x, least_likely)
        else:
            labels = _labels(model, x, target, samples, max_batch, least_likely)
            grad = input_gradient(model, x, labels, samples=samples, max_batch=max_batch)
    direction = -grad.sign() if least_likely else grad.sign()
    # x + eps * sign is x + eps, x or x - eps: already in the ball, so projecting is a clamp.
    return (x + eps_t * direction).clamp(PIXEL_MIN, PIXEL_MAX).detach()


def _draws_needed(model: nn.Module, samples: int) -> int:
    """``samples``, or 1 for a model without randomness (its EOT average is its one gradient)."""
    return samples if _is_stochastic(model) else 1


def _is_stochastic(model: nn.Module) -> bool:
    """Whether ``model`` has an enabled stochastic layer (SAP, always-on dropout, input noise)."""
    return any(layer.enabled for layer in stochastic_modules(model))


def _gradient_at_own_prediction(
    model: nn.Module, x: torch.Tensor, least_likely: bool
) -> torch.Tensor:
    """:func:`input_gradient` for the labels :func:`_labels` would predict, from one forward pass.

    Only for a deterministic model: the logits of the gradient pass then equal those of a no-grad
    pass on the same ``x``, so the labels read from them are the model's clean prediction.
    """
    xs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xs).reshape(x.shape[0], -1)
        scores = logits.detach()
        labels = scores.argmin(dim=1) if least_likely else scores.argmax(dim=1)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xs)
    return grad


def _iterative_attack(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    steps: int,
    step_size: Eps | None,
    random_start: bool,
    target: torch.Tensor | None,
    samples: int,
    generator: torch.Generator | None,
    max_batch: int | None,
    least_likely: bool,
    stochastic: bool,
    loss: GradientLoss = "ce",
    restarts: int = 1,
) -> torch.Tensor:
    eps_t = _validate(x, eps, samples)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 need random_start=True (otherwise every run is the same)")
    if loss not in GRADIENT_LOSSES:
        raise ValueError(f"loss must be one of {GRADIENT_LOSSES}, got {loss!r}")
    alpha = 2.5 * eps_t / steps if step_size is None else _validate(x, step_size, 1)
    with eval_mode(model, stochastic=stochastic):
        samples = _draws_needed(model, samples)
        labels = _labels(model, x, target, samples, max_batch, least_likely)
        best = x.detach().clone()
        best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for restart in range(restarts):
            x_adv = x.detach().clone()
            if random_start:
                noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
                x_adv = _project(x_adv + (2 * noise.to(x.device) - 1) * eps_t, x, eps_t)
            for _ in range(steps):
                grad = input_gradient(
                    model, x_adv, labels, samples=samples, max_batch=max_batch, loss=loss
                )
                direction = -grad.sign() if least_likely else grad.sign()
                x_adv = _project(x_adv + alpha * direction, x, eps_t)
            if restarts == 1:
                return x_adv.detach()
            # Keep, per example, the run that fools the model, else the one with the highest loss
            # (for l.l., the lowest loss of the least-likely class); the first run wins ties, so
            # restarts never return a worse point than the first run alone.
            value, top = _mean_loss(model, x_adv, labels, samples, max_batch, loss)
            fooled = top == labels if least_likely else top != labels
            if least_likely:
                value = -value
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (value > best_loss))
            if restart == 0:
                better = torch.ones_like(better)
            best[better] = x_adv[better]
            best_fooled = torch.where(better, fooled, best_fooled)
            best_loss = torch.where(better, value, best_loss)
    return best.detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    target: torch.Tensor | None = None,
    samples: int = 1,
    max_batch: int | None = None,
    stochastic: bool = True,
) -> torch.Tensor:
    """Fast gradient sign method: ``clip(x + eps * sign(grad_x CE(model(x), target)))``.

    Args:
        model: maps a float batch in [0, 255] to logits or Q-values.
        x: clean batch, float, pixel units.
        eps: L-inf budget in pixel units, a number or one value per example (shape (B,)).
        target: labels to move away from; ``None`` uses the model's prediction on clean ``x``
            (the mean output over ``samples`` passes).
        samples: stochastic passes whose gradients are averaged (EOT); 1 is the plain attack.
        max_batch: largest number of rows per forward pass (memory bound for large ``samples``).
        stochastic: ``False`` attacks the model with its stochastic layers switched off.

    Returns:
        The adversarial batch (detached, same dtype and shape as ``x``).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.full((1, 1, 2, 2), 3.0)  # small inputs: the softmax is not saturated
        >>> fgsm(net, x, eps=2.0).sub(x).abs().max().item()
        2.0
    """
    return _step_attack(
        model, x, eps, target=target, samples=samples, max_batch=max_batch,
        least_likely=False, stochastic=stochastic,
    )  # fmt: skip


def fgsm_ll(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    samples: int = 1,
    max_batch: int | None = None,
    stochastic: bool = True,
) -> torch.Tensor:
    """Kurakin et al.'s "step l.l.": ``clip(x - eps * sign(grad_x CE(model(x), y_LL)))``.

    ``y_LL`` is the least-likely class of the clean prediction. Same arguments as :func:`fgsm`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> fgsm_ll(net, torch.full((2, 1, 2, 2), 9.0), eps=1.0).shape
        torch.Size([2, 1, 2, 2])
    """
    return _step_attack(
        model, x, eps, target=None, samples=samples, max_batch=max_batch,
        least_likely=True, stochastic=stochastic,
    )  # fmt: skip


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    steps: int,
    step_size: Eps | None = None,
    random_start: bool = True,
    target: torch.Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    stochastic: bool = True,
    loss: GradientLoss = "ce",
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient descent (basic iterative method) in the L-inf ball of radius ``eps``.

    Each of ``steps`` iterations moves by ``step_size`` (default ``2.5 * eps / steps``, Madry et
    al.) along the gradient sign of ``loss`` and projects back onto the ball and [0, 255].
    ``random_start`` begins from a uniform point of the ball drawn with ``generator``. Other
    arguments as :func:`fgsm`; the labels are fixed once from the clean input.

    Args:
        loss: ``"ce"`` (cross-entropy) or ``"cw"`` (Carlini and Wagner's margin,
            :func:`margin_loss`).
        restarts: independent runs from fresh random starts (drawn in turn from ``generator``;
            needs ``random_start``). Each example keeps the run that fools the model (top class of
            the mean output over ``samples`` passes is not its label), else the run with the
            highest loss; the first run wins ties. The first run is the one ``restarts=1`` makes
            with the same generator state, so restarts are never worse per example. Every run
            after the first adds ``steps`` gradients and one loss evaluation.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.full((3, 1, 2, 2), 50.0)
        >>> bool((pgd(net, x, 8.0, steps=5) - x).abs().max() <= 8.0)
        True
        >>> x_adv = pgd(net, x, 8.0, steps=5, loss="cw", restarts=3)
        >>> bool((x_adv - x).abs().max() <= 8.0)
        True
    """
    return _iterative_attack(
        model, x, eps, steps=steps, step_size=step_size, random_start=random_start,
        target=target, samples=samples, generator=generator, max_batch=max_batch,
        least_likely=False, stochastic=stochastic, loss=loss, restarts=restarts,
    )  # fmt: skip


def pgd_ll(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    steps: int,
    step_size: Eps | None = None,
    random_start: bool = False,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    stochastic: bool = True,
    restarts: int = 1,
) -> torch.Tensor:
    """Kurakin et al.'s "iter l.l.": iterated descent on the least-likely class's loss.

    Kurakin et al. used ``step_size=1`` and ``steps=min(eps + 4, 1.25 * eps)``; the default step is
    ``2.5 * eps / steps`` like :func:`pgd`. ``restarts`` as in :func:`pgd` (needs
    ``random_start=True``); a run is better when the top class is the least-likely class, else
    when that class's cross-entropy is lower.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.full((2, 1, 2, 2), 9.0)
        >>> bool((pgd_ll(net, x, 4.0, steps=3, step_size=1.0) - x).abs().max() <= 3.0)
        True
    """
    return _iterative_attack(
        model, x, eps, steps=steps, step_size=step_size, random_start=random_start,
        target=None, samples=samples, generator=generator, max_batch=max_batch,
        least_likely=True, stochastic=stochastic, restarts=restarts,
    )  # fmt: skip
