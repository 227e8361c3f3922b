"""Attacks in pixel units, model-agnostic, with expectation over a stochastic defense.

A *model* maps a float batch in pixel units [0, 255] to logits (classifiers) or Q-values (agents).
``eps`` and step sizes are in pixel units (``eps=1`` is one grey level); outputs are clipped to
[0, 255] and to the L-inf ball of radius ``eps`` around the clean input.

- :func:`fgsm` — Goodfellow et al. 2015: ``x + eps * sign(grad_x CE(model(x), y))``.
- :func:`pgd` — projected gradient descent / basic iterative method (Kurakin et al. 2017, Madry
  et al. 2018), optional random start, cross-entropy or Carlini-Wagner margin loss, restarts.
- :func:`fgsm_ll`, :func:`pgd_ll` — Kurakin et al.'s "step l.l." and "iter l.l.": descend the
  loss of the least-likely class.
- :func:`apgd` (APGD-CE, APGD-DLR) and :func:`square` — AutoAttack's attacks (Croce and Hein
  2020), the authors' own code wrapped for pixel units (:mod:`sap_rl.attacks.autoattack`).
- :func:`parse_attack` / :class:`AttackSpec` — attack names (``pgd-10-eot``, ``apgd-ce-eot``...),
  the one entry point both evaluators call (:mod:`sap_rl.attacks.spec`).

``target=None`` uses the model's own prediction on the clean input (for a Q-network its greedy
action, as Huang et al. 2017 did), which avoids label leaking. ``samples=k`` averages the gradient
over ``k`` stochastic forward passes — expectation over transformation (EOT), the adaptive attack
with which Athalye et al. 2018 broke SAP. The ``k`` copies of the batch go through the model as
one batch, so every copy gets its own SAP draw (APGD's passes run one after another, as in
AutoAttack).

Attacks run the model in eval mode (so batch-norm statistics are not updated) and restore every
module's train/eval flag afterwards. Stochastic defense layers
(:class:`sap_rl.sap.StochasticModule`) stay active unless ``stochastic=False``, which attacks the
deterministic (dense) network instead.
No parameter gradients are accumulated.

The package imports torch only when one of its torch names is first used (PEP 562), so the
command line's help can list the attack grammar from :mod:`sap_rl.attacks.names` quickly.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sap_rl.attacks import fgsm, parse_attack
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> x = torch.randint(0, 256, (2, 1, 4, 4)).float()
    >>> x_adv = fgsm(model, x, eps=4.0)
    >>> bool((x_adv - x).abs().max() <= 4.0) and bool(x_adv.min() >= 0) and bool(x_adv.max() <= 255)
    True
    >>> x_adv = parse_attack("apgd-ce-10").run(model, x, 4.0, generator=torch.Generator())
    >>> bool((x_adv - x).abs().max() <= 4.0)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sap_rl.attacks.names import (
    ATTACK_NAMES_HELP,
    MAX_ATTACK_RESTARTS,
    MAX_ATTACK_STEPS,
    MAX_EOT_SAMPLES,
    MAX_SQUARE_QUERIES,
    check_eot_samples,
)

if TYPE_CHECKING:
    from sap_rl.attacks.autoattack import (
        AUTOATTACK_PACKAGE,
        apgd,
        autoattack_available,
        require_autoattack,
        square,
    )
    from sap_rl.attacks.gradient import (
        GRADIENT_LOSSES,
        PIXEL_MAX,
        PIXEL_MIN,
        eval_mode,
        fgsm,
        fgsm_ll,
        input_gradient,
        margin_loss,
        pgd,
        pgd_ll,
        predict,
    )
    from sap_rl.attacks.spec import AttackSpec, parse_attack

#: The torch names and the module that defines each, imported on first use.
_LAZY = {
    **dict.fromkeys(
        ("AUTOATTACK_PACKAGE", "apgd", "autoattack_available", "require_autoattack", "square"),
        "autoattack",
    ),
    **dict.fromkeys(
        (
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
        ),
        "gradient",
    ),
    **dict.fromkeys(("AttackSpec", "parse_attack"), "spec"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ATTACK_NAMES_HELP",
    "AUTOATTACK_PACKAGE",
    "GRADIENT_LOSSES",
    "MAX_ATTACK_RESTARTS",
    "MAX_ATTACK_STEPS",
    "MAX_EOT_SAMPLES",
    "MAX_SQUARE_QUERIES",
    "PIXEL_MAX",
    "PIXEL_MIN",
    "AttackSpec",
    "apgd",
    "autoattack_available",
    "check_eot_samples",
    "eval_mode",
    "fgsm",
    "fgsm_ll",
    "input_gradient",
    "margin_loss",
    "parse_attack",
    "pgd",
    "pgd_ll",
    "predict",
    "require_autoattack",
    "square",
]
