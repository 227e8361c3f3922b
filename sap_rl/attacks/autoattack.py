"""APGD and Square from the AutoAttack authors' code, wrapped for pixel-unit, stochastic models.

The attack code is Croce and Hein's own (``APGDAttack`` and ``SquareAttack`` of
https://github.com/fra31/auto-attack, as packaged on PyPI by ``pyautoattack``); this module only
adapts sap-rl's conventions to it:

- **Units.** sap-rl models take pixel units [0, 255]; AutoAttack works on [0, 1]. The library sees
  the model behind a ``x * 255`` scaling, ``eps / 255`` as its budget, and the result is mapped
  back and projected once more onto the pixel-unit ball and [0, 255] (so float rounding of the
  round trip never leaves it).
- **Labels.** As for :func:`sap_rl.attacks.fgsm`: ``target=None`` attacks the model's own
  prediction on the clean input (mean output over ``samples`` passes); for a Q-network that is
  its greedy action, and the losses act on its Q-values as logits.
- **Randomness of the defense.** sap-rl's stochastic layers ignore train/eval, so SAP stays random
  in the eval mode the attack runs in. ``samples > 1`` is AutoAttack's ``version="rand"`` setting:
  APGD averages its gradient over ``samples`` passes (the library's ``eot_iter``; AutoAttack uses
  20), Square's margin is that of the output averaged over ``samples`` passes.
- **Seeds.** The library draws from torch's global generator and seeds it itself. The wrappers
  draw one seed from ``generator`` (``torch.randint(2**31 - 1, (), generator=generator)``; torch's
  global generator when ``None``) and run the library inside a forked RNG state seeded with it:
  same generator state, same result, and the caller's global RNG state is left as it was
  (defense draws of layers without their own generator come from that forked state too).
- **Output.** Per example, the latest point that fooled the model during the attack, else the
  point with the highest loss (APGD) or lowest margin (Square). The library's ``perturb`` returns
  the clean input for an example it did not fool; against a randomized defense "not fooled" is
  the verdict of one draw, and the evaluator's fresh draws should see the strongest point found,
  so the wrappers call the library's single-run routine and make that choice themselves (one run,
  no restarts, as AutoAttack's ``rand`` version).
- **Models with per-row context.** The library may call the model on a subset of the batch (Square
  drops the examples it has fooled; a per-example ``eps`` runs once per distinct value). A model
  whose output for one row depends on more than that row of its input (the RL attack's model of
  the newest frame, which holds the older frames of every row) must have a ``rows(index)`` method
  that returns the model for those rows; Square then attacks such a model one example at a time.
- **Modes and gradients.** The model runs in eval mode with its train/eval flags restored
  afterwards; the library takes gradients with ``torch.autograd.grad`` with respect to the input
  only, so no parameter gradients are accumulated.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> x = torch.randint(0, 256, (4, 1, 4, 4)).float()
    >>> x_adv = apgd(net, x, 2.0, steps=5, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 2.0)
    True
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from sap_rl.attacks.gradient import (
    PIXEL_MAX,
    Eps,
    _draws_needed,
    _labels,
    _project,
    _validate,
    eval_mode,
)
from sap_rl.attacks.names import APGD_STEPS, SQUARE_QUERIES
from sap_rl.errors import UserError
from sap_rl.sap import forward_copies, mc_average

__all__ = ["AUTOATTACK_PACKAGE", "apgd", "autoattack_available", "require_autoattack", "square"]

#: The PyPI distribution that ships AutoAttack's code (an ordinary dependency of sap-rl).
AUTOATTACK_PACKAGE = "pyautoattack"

ApgdLoss = Literal["ce", "dlr"]


class _DebugLog(logging.LoggerAdapter):
    """The library's warnings (points with a zero DLR gradient) as DEBUG records.

    The library warns once per attacked batch; in RL that is once per agent step, thousands of
    lines per game. Its words stay available with ``logging.DEBUG`` on this module's logger.
    """

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_LOG = _DebugLog(logging.getLogger(__name__), {})


def autoattack_available() -> bool:
    """Whether the AutoAttack code (``pyautoattack``) can be imported.

    Example:
        >>> isinstance(autoattack_available(), bool)
        True
    """
    try:
        importlib.import_module(f"{AUTOATTACK_PACKAGE}.autopgd_base")
    except ImportError:
        return False
    return True


def require_autoattack(name: str) -> None:
    """Raise a one-line :class:`UserError` naming the package when attack ``name`` cannot run.

    Example:
        >>> require_autoattack("apgd-ce") if autoattack_available() else None
    """
    if not autoattack_available():
        raise UserError(
            f"attack {name!r} runs AutoAttack's code, which is not installed: "
            f"pip install {AUTOATTACK_PACKAGE}==0.2.0 (a dependency of sap-rl)"
        )


def _library(module: str, name: str) -> Any:
    require_autoattack(name)
    return importlib.import_module(f"{AUTOATTACK_PACKAGE}.{module}")


class _UnitScale(nn.Module):
    """``model`` seen from [0, 1] inputs, with outputs flattened to ``(B, classes)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x * PIXEL_MAX)
        return out.reshape(x.shape[0], -1)

    def forward_copies(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        """As :func:`sap_rl.sap.forward_copies` (the model's shared layers run once)."""
        out = forward_copies(self.model, x * PIXEL_MAX, copies)
        return out.reshape(copies * x.shape[0], -1)


class _MeanOutput(nn.Module):
    """Output averaged over ``samples`` stochastic passes of ``model`` (one batched pass)."""

    def __init__(self, model: nn.Module, samples: int, max_batch: int | None) -> None:
        super().__init__()
        self.model = model
        self.samples = samples
        self.max_batch = max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = mc_average(self.model, x, self.samples, max_batch=self.max_batch)
        return out.reshape(x.shape[0], -1)


def _library_seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(2**31 - 1, (), generator=generator))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG seeded with ``seed`` inside, the caller's state restored after."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else 0
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _eps_groups(x: torch.Tensor, eps_t: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
    """``(example indices, eps)`` for each distinct non-zero budget (the library takes a number)."""
    flat = eps_t.reshape(-1)
    if flat.numel() == 1:
        value = float(flat[0])
        everyone = torch.arange(x.shape[0], device=x.device)
        return [(everyone, value)] if value > 0 else []
    return [
        ((flat == value).nonzero().reshape(-1), float(value))
        for value in torch.unique(flat).tolist()
        if value > 0
    ]


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).reshape(x.shape[0], -1).shape[1])


def _rows(model: nn.Module, index: torch.Tensor, batch: int) -> nn.Module:
    """``model`` for the rows ``index`` of a batch of ``batch`` rows (see "per-row context")."""
    restrict = getattr(model, "rows", None)
    if restrict is None or index.numel() == batch:  # indices are distinct: all rows, in order
        return model
    restricted: nn.Module = restrict(index)
    return restricted


def _run(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    target: torch.Tensor | None,
    samples: int,
    generator: torch.Generator | None,
    max_batch: int | None,
    stochastic: bool,
    make: Any,
    one_by_one: bool = False,
) -> torch.Tensor:
    """Shared body: validate, fix labels and seed, run ``make(model01, x01, y, eps01, seed, k)``.

    ``one_by_one`` runs each example alone when the model has per-row context.
    """
    eps_t = _validate(x, eps, samples)
    out = x.detach().clone()
    batch = x.shape[0]
    with eval_mode(model, stochastic=stochastic):
        samples = _draws_needed(model, samples)
        groups = _eps_groups(x, eps_t)
        if not groups:
            return out
        labels = _labels(model, x, target, samples, max_batch, least_likely=False)
        if one_by_one and batch > 1 and callable(getattr(model, "rows", None)):
            groups = [
                (index[i : i + 1], value) for index, value in groups for i in range(len(index))
            ]
        seed = _library_seed(generator)
        for index, value in groups:
            scaled = _UnitScale(_rows(model, index, batch))
            x01 = (x[index].detach() / PIXEL_MAX).float()
            with _seeded(seed, x.device):
                adv01 = make(scaled, x01, labels[index], value / PIXEL_MAX, seed, samples)
            out[index] = (adv01.detach() * PIXEL_MAX).to(x.dtype)
    return _project(out, x.detach(), eps_t).detach()


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    loss: ApgdLoss = "ce",
    steps: int = APGD_STEPS,
    target: torch.Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    stochastic: bool = True,
) -> torch.Tensor:
    """AutoAttack's APGD (Croce and Hein 2020), L-inf, on cross-entropy or DLR loss.

    A step-size-free PGD: momentum, and a step halved whenever the loss stops improving at its
    checkpoints. See the module docstring for units, labels, seeding and the returned point.

    Args:
        model: maps a float batch in [0, 255] to logits or Q-values.
        x: clean batch, float, pixel units.
        eps: L-inf budget in pixel units, a number or one value per example (shape (B,)).
        loss: ``"ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR: the difference of logits ratio, invariant
            to the logits' scale; needs at least 3 classes).
        steps: iterations (AutoAttack: 100).
        target: labels to move away from; ``None`` uses the model's prediction on clean ``x``.
        samples: stochastic passes whose gradients are averaged at every step (EOT); 1 is the
            plain attack. The passes run one after another, as in the library.
        generator: source of the library's seed (random start).
        max_batch: largest number of rows per pass when predicting the labels.
        stochastic: ``False`` attacks the model with its stochastic layers switched off.

    Raises:
        UserError: DLR on a model with fewer than 3 classes, or the library is not installed.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
        >>> x = torch.randint(0, 256, (3, 1, 4, 4)).float()
        >>> x_adv = apgd(net, x, 4.0, loss="dlr", steps=5)
        >>> bool((x_adv - x).abs().max() <= 4.0) and x_adv.shape == x.shape
        True
    """
    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    autopgd = _library("autopgd_base", f"apgd-{loss}")
    if loss == "dlr":
        classes = _num_classes(model, x)
        if classes < 3:
            raise UserError(
                f"apgd-dlr needs at least 3 classes (actions); this model has {classes}: "
                "use apgd-ce"
            )

    def make(
        scaled: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps01: float, seed: int, k: int
    ) -> torch.Tensor:
        attack = autopgd.APGDAttack(
            scaled, n_iter=steps, norm="Linf", n_restarts=1, eps=eps01, seed=seed, loss=loss,
            eot_iter=k, rho=0.75, verbose=False, device=x01.device, logger=_LOG,
        )  # fmt: skip
        attack.init_hyperparam(x01)
        best, robust, _, fooling = attack.attack_single_run(x01, y)
        keep = robust.reshape(-1, *([1] * (x01.ndim - 1)))
        return torch.where(keep, best, fooling)

    return _run(
        model, x, eps, target=target, samples=samples, generator=generator,
        max_batch=max_batch, stochastic=stochastic, make=make,
    )  # fmt: skip


def square(
    model: nn.Module,
    x: torch.Tensor,
    eps: Eps,
    *,
    queries: int = SQUARE_QUERIES,
    target: torch.Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    stochastic: bool = True,
    p_init: float = 0.8,
) -> torch.Tensor:
    """AutoAttack's Square attack (Andriushchenko et al. 2020), L-inf, score-based, no gradients.

    Random square-shaped updates at the corners of the ball, kept when they lower the margin
    ``z_y - max_{j != y} z_j``; an example stops once its margin is negative. Being gradient-free,
    it checks for gradient masking: it must not beat the white-box attacks. See the module
    docstring for units, labels, seeding and the returned point.

    Args:
        model: maps a float batch ``(B, C, H, W)`` in [0, 255] to logits or Q-values.
        x: clean image batch, float, pixel units.
        eps: L-inf budget in pixel units, a number or one value per example.
        queries: model evaluations per example at most (AutoAttack: 5000).
        target: labels to move away from; ``None`` uses the model's prediction on clean ``x``.
        samples: stochastic passes averaged in every query's output (one batched pass).
        generator: source of the library's seed.
        max_batch: largest number of rows per pass.
        stochastic: ``False`` attacks the model with its stochastic layers switched off.
        p_init: initial fraction of pixels in a square (AutoAttack's 0.8).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x = torch.randint(0, 256, (2, 1, 4, 4)).float()
        >>> bool((square(net, x, 8.0, queries=20) - x).abs().max() <= 8.0)
        True
    """
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ValueError(f"queries must be an integer >= 1, got {queries!r}")
    if x.ndim != 4:
        raise ValueError(f"square needs an image batch (B, C, H, W), got shape {tuple(x.shape)}")
    square_module = _library("square", "square")

    def make(
        scaled: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps01: float, seed: int, k: int
    ) -> torch.Tensor:
        predict = _MeanOutput(scaled, k, max_batch) if k > 1 else scaled
        attack = square_module.SquareAttack(
            predict, norm="Linf", n_queries=queries, eps=eps01, p_init=p_init, n_restarts=1,
            seed=seed, verbose=False, targeted=False, loss="margin", resc_schedule=True,
            device=x01.device,
        )  # fmt: skip
        attack.init_hyperparam(x01)
        _, adv = attack.attack_single_run(x01, y)
        return adv

    return _run(
        model, x, eps, target=target, samples=samples, generator=generator,
        max_batch=max_batch, stochastic=stochastic, make=make, one_by_one=True,
    )  # fmt: skip
