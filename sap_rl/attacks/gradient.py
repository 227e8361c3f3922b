"""Gradient attacks in pixel units, model-agnostic, with expectation over a stochastic defense.

A *model* maps a float batch in pixel units [0, 255] to logits (classifiers) or Q-values (agents).
``eps`` and step sizes are in pixel units (``eps=1`` is one grey level); outputs are clipped to
[0, 255] and to the L-inf ball of radius ``eps`` around the clean input.

- :func:`fgsm` — Goodfellow et al. 2015: ``x + eps * sign(grad_x CE(model(x), y))``.
- :func:`pgd` — projected gradient descent / basic iterative method (Kurakin et al. 2017, Madry
  et al. 2018), optional random start.
- :func:`fgsm_ll`, :func:`pgd_ll` — Kurakin et al.'s "step l.l." and "iter l.l.": descend the
  loss of the least-likely class.

``target=None`` uses the model's own prediction on the clean input (for a Q-network its greedy
action, as Huang et al. 2017 did), which avoids label leaking. ``samples=k`` averages the gradient
over ``k`` stochastic forward passes — expectation over transformation (EOT), the adaptive attack
with which Athalye et al. 2018 broke SAP. The ``k`` copies of the batch go through the model as
one batch, so every copy gets its own SAP draw.

Attacks run the model in eval mode (so batch-norm statistics are not updated) and restore every
module's train/eval flag afterwards. Stochastic defense layers
(:class:`sap_rl.sap.StochasticModule`) stay active unless ``stochastic=False``, which attacks the
deterministic (dense) network instead.
No parameter gradients are accumulated.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4) * 255
    >>> x_adv = fgsm(model, x, eps=4.0)
    >>> bool((x_adv - x).abs().max() <= 4.0) and bool(x_adv.min() >= 0) and bool(x_adv.max() <= 255)
    True
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.errors import UserError
from sap_rl.sap import deterministic, forward_copies, mc_average, stochastic_modules

__all__ = [
    "ATTACK_NAMES_HELP",
    "MAX_ATTACK_STEPS",
    "MAX_EOT_SAMPLES",
    "AttackSpec",
    "check_eot_samples",
    "eval_mode",
    "fgsm",
    "fgsm_ll",
    "input_gradient",
    "parse_attack",
    "pgd",
    "pgd_ll",
    "predict",
]

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0

Eps = float | torch.Tensor


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


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 1,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. ``x`` of the cross-entropy ``CE(model(x), labels)``, averaged over samples.

    The loss is summed over the batch (each example's gradient is its own loss's gradient) and
    averaged over ``samples`` stochastic passes, computed in chunks of at most ``max_batch`` rows
    (default: all ``samples * B`` rows in one pass).

    Example:
        >>> g = input_gradient(nn.Linear(3, 2), torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
        >>> g.shape
        torch.Size([4, 3])
    """
    batch = x.shape[0]
    per_chunk = samples if max_batch is None else max(1, max_batch // max(batch, 1))
    grad = torch.zeros_like(x)
    done = 0
    while done < samples:
        n = min(per_chunk, samples - done)
        xs = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward_copies(model, xs, n)
            loss = F.cross_entropy(logits.float(), labels.repeat(n), reduction="sum")
            (part,) = torch.autograd.grad(loss, xs)
        grad += part
        done += n
    return grad / samples


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
) -> torch.Tensor:
    eps_t = _validate(x, eps, samples)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    alpha = 2.5 * eps_t / steps if step_size is None else _validate(x, step_size, 1)
    with eval_mode(model, stochastic=stochastic):
        samples = _draws_needed(model, samples)
        labels = _labels(model, x, target, samples, max_batch, least_likely)
        x_adv = x.detach().clone()
        if random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
            x_adv = _project(x_adv + (2 * noise.to(x.device) - 1) * eps_t, x, eps_t)
        for _ in range(steps):
            grad = input_gradient(model, x_adv, labels, samples=samples, max_batch=max_batch)
            direction = -grad.sign() if least_likely else grad.sign()
            x_adv = _project(x_adv + alpha * direction, x, eps_t)
    return x_adv.detach()


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
        >>> fgsm(net, torch.full((1, 1, 2, 2), 100.0), eps=2.0).sub(100).abs().max().item()
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
) -> torch.Tensor:
    """Projected gradient descent (basic iterative method) in the L-inf ball of radius ``eps``.

    Each of ``steps`` iterations moves by ``step_size`` (default ``2.5 * eps / steps``, Madry et
    al.) along the gradient sign and projects back onto the ball and [0, 255]. ``random_start``
    begins from a uniform point of the ball drawn with ``generator``. Other arguments as
    :func:`fgsm`; the labels are fixed once from the clean input.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.full((3, 1, 2, 2), 50.0)
        >>> bool((pgd(net, x, 8.0, steps=5) - x).abs().max() <= 8.0)
        True
    """
    return _iterative_attack(
        model, x, eps, steps=steps, step_size=step_size, random_start=random_start,
        target=target, samples=samples, generator=generator, max_batch=max_batch,
        least_likely=False, stochastic=stochastic,
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
) -> torch.Tensor:
    """Kurakin et al.'s "iter l.l.": iterated descent on the least-likely class's loss.

    Kurakin et al. used ``step_size=1`` and ``steps=min(eps + 4, 1.25 * eps)``; the default step is
    ``2.5 * eps / steps`` like :func:`pgd`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.full((2, 1, 2, 2), 9.0)
        >>> bool((pgd_ll(net, x, 4.0, steps=3, step_size=1.0) - x).abs().max() <= 3.0)
        True
    """
    return _iterative_attack(
        model, x, eps, steps=steps, step_size=step_size, random_start=random_start,
        target=None, samples=samples, generator=generator, max_batch=max_batch,
        least_likely=True, stochastic=stochastic,
    )  # fmt: skip


#: Most PGD steps an attack name may ask for. The literature uses 10 to 100; a name like
#: ``pgd-1000000`` is a typo that would run for days (every step is a forward and backward pass
#: per agent step or image), so it is refused up front.
MAX_ATTACK_STEPS = 1000
#: Most stochastic passes one ``-eot`` gradient may average (``eot_samples``), for the same reason.
MAX_EOT_SAMPLES = 1000

ATTACK_NAMES_HELP = (
    f"fgsm, fgsm-ll, pgd-<steps> (1 to {MAX_ATTACK_STEPS}), pgd-<steps>-ll, and each with an "
    "-eot suffix (gradient averaged over the defense's randomness), e.g. fgsm-eot, pgd-10-eot"
)
_ATTACK_RE = re.compile(r"^(?P<kind>fgsm|pgd-(?P<steps>\d+))(?P<ll>-ll)?(?P<eot>-eot)?$")


def check_eot_samples(value: int, name: str = "eot-samples") -> int:
    """``value`` if it is a valid number of draws per EOT gradient (1 to :data:`MAX_EOT_SAMPLES`).

    Raises:
        UserError: not an integer, below 1 or above the bound (the message names it).

    Example:
        >>> check_eot_samples(16)
        16
        >>> check_eot_samples(5000)
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: eot-samples must be an integer from 1 to 1000, got 5000
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EOT_SAMPLES:
        raise UserError(f"{name} must be an integer from 1 to {MAX_EOT_SAMPLES}, got {value!r}")
    return value


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name (see :func:`parse_attack`); :meth:`run` applies it to a batch."""

    name: str
    kind: str
    steps: int = 1
    least_likely: bool = False
    eot: bool = False

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        eps: Eps,
        *,
        target: torch.Tensor | None = None,
        eot_samples: int = 16,
        generator: torch.Generator | None = None,
        max_batch: int | None = None,
    ) -> torch.Tensor:
        """Attack ``x`` with budget ``eps``; an all-zero budget returns ``x`` without a model call.

        ``eot_samples`` is used only by ``-eot`` attacks.
        """
        if isinstance(eps, (int, float)) and eps == 0:
            _validate(x, eps, 1)
            return x.detach().clone()
        samples = eot_samples if self.eot else 1
        if self.kind == "fgsm":
            if self.least_likely:
                return fgsm_ll(model, x, eps, samples=samples, max_batch=max_batch)
            return fgsm(model, x, eps, target=target, samples=samples, max_batch=max_batch)
        if self.least_likely:
            return pgd_ll(
                model, x, eps, steps=self.steps, samples=samples, generator=generator,
                max_batch=max_batch,
            )  # fmt: skip
        return pgd(
            model, x, eps, steps=self.steps, target=target, samples=samples,
            generator=generator, max_batch=max_batch,
        )  # fmt: skip


def parse_attack(name: str) -> AttackSpec:
    """Parse an attack name such as ``fgsm``, ``fgsm-eot``, ``pgd-10`` or ``pgd-10-ll-eot``.

    Raises:
        UserError: for an unknown name (the message lists the valid forms), or more than
            :data:`MAX_ATTACK_STEPS` steps.

    Example:
        >>> parse_attack("pgd-10-eot")
        AttackSpec(name='pgd-10-eot', kind='pgd', steps=10, least_likely=False, eot=True)
        >>> parse_attack("pgd-1000000")
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: attack 'pgd-1000000': at most 1000 PGD steps (pgd-1 to pgd-1000)
    """
    match = _ATTACK_RE.match(name.strip().lower())
    if match is None or (match["steps"] is not None and not match["steps"].strip("0")):  # pgd-0
        raise UserError(f"unknown attack {name!r}; valid attacks: {ATTACK_NAMES_HELP}")
    digits = (match["steps"] or "1").lstrip("0")
    # Compare the digits before int(): Python refuses to convert thousands of them.
    if len(digits) > len(str(MAX_ATTACK_STEPS)) or int(digits) > MAX_ATTACK_STEPS:
        shown = name.strip() if len(name.strip()) <= 40 else name.strip()[:37] + "..."
        raise UserError(
            f"attack {shown!r}: at most {MAX_ATTACK_STEPS} PGD steps "
            f"(pgd-1 to pgd-{MAX_ATTACK_STEPS})"
        )
    steps = int(digits)
    return AttackSpec(
        name=match.group(0),
        kind="fgsm" if match["kind"] == "fgsm" else "pgd",
        steps=steps,
        least_likely=match["ll"] is not None,
        eot=match["eot"] is not None,
    )
