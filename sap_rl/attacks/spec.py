"""Attack names: :func:`parse_attack` turns a name into an :class:`AttackSpec` that runs it.

Grammar (case-insensitive; ``-eot`` always last):

- ``fgsm[-ll][-eot]``
- ``pgd-<steps>[-cw|-ll][-r<restarts>][-eot]``: ``-cw`` ascends Carlini and Wagner's margin
  instead of cross-entropy, ``-r<k>`` keeps each example's best of ``k`` random starts.
- ``apgd-ce[-<steps>][-eot]``, ``apgd-dlr[-<steps>][-eot]``: AutoAttack's APGD (100 steps by
  default, as AutoAttack).
- ``square[-<queries>][-eot]``: AutoAttack's Square (5000 queries by default, as AutoAttack).
- ``transfer-<attack>``: any attack above made on the dense network (the defended model with its
  stochastic layers off, same weights) and applied to the defended one; a check for gradient
  masking (it should never beat the white-box attack). ``-eot`` is accepted but changes nothing:
  the dense network has no randomness to average over.
- ``timed-<attack>`` (sap-rl evaluate only): Lin et al. 2017's strategically timed attack, the
  attack run only on the steps where the agent's preference (its softmax's largest minus smallest
  action probability) exceeds a threshold; the threshold and budget are evaluation settings.
  ``timed-transfer-<attack>`` times a transfer attack.

``-eot`` averages over the defense's randomness (``eot_samples`` draws): gradients for FGSM, PGD
and APGD (AutoAttack's ``rand`` version for APGD), the scored output for Square. Counts are bounded
(:data:`MAX_ATTACK_STEPS`, :data:`MAX_SQUARE_QUERIES`, :data:`MAX_ATTACK_RESTARTS`) because every
step is a forward and backward pass per agent step or image: ``pgd-1000000`` is a typo that would
run for days, so it is refused up front.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from sap_rl.attacks.autoattack import apgd, require_autoattack, square
from sap_rl.attacks.gradient import Eps, _validate, fgsm, fgsm_ll, pgd, pgd_ll
from sap_rl.attacks.names import (
    APGD_STEPS,
    ATTACK_NAMES_HELP,
    MAX_ATTACK_RESTARTS,
    MAX_ATTACK_STEPS,
    MAX_EOT_SAMPLES,
    MAX_SQUARE_QUERIES,
    SQUARE_QUERIES,
    TIMED_PREFIX,
    TRANSFER_PREFIX,
    check_eot_samples,
)
from sap_rl.errors import UserError

__all__ = [
    "ATTACK_NAMES_HELP",
    "MAX_ATTACK_RESTARTS",
    "MAX_ATTACK_STEPS",
    "MAX_EOT_SAMPLES",
    "MAX_SQUARE_QUERIES",
    "TIMED_PREFIX",
    "TRANSFER_PREFIX",
    "AttackSpec",
    "check_eot_samples",
    "parse_attack",
]

_PATTERNS = {
    "fgsm": re.compile(r"^fgsm(?P<ll>-ll)?(?P<eot>-eot)?$"),
    "pgd": re.compile(
        r"^pgd-(?P<steps>\d+)(?:-(?P<loss>cw)|(?P<ll>-ll))?(?:-r(?P<restarts>\d+))?(?P<eot>-eot)?$"
    ),
    "apgd": re.compile(r"^apgd-(?P<loss>ce|dlr)(?:-(?P<steps>\d+))?(?P<eot>-eot)?$"),
    "square": re.compile(r"^square(?:-(?P<steps>\d+))?(?P<eot>-eot)?$"),
}


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name (see :func:`parse_attack`); :meth:`run` applies it to a batch.

    Attributes:
        name: the canonical name (lower case).
        kind: ``"fgsm"``, ``"pgd"``, ``"apgd"`` or ``"square"``.
        steps: iterations (PGD, APGD) or queries (Square); 1 for FGSM.
        least_likely: Kurakin et al.'s least-likely-class variant (FGSM, PGD).
        eot: average over ``eot_samples`` draws of the defense.
        loss: ``"ce"``, ``"cw"`` (PGD), ``"dlr"`` (APGD) or ``"margin"`` (Square).
        restarts: random starts, each example keeps its best (PGD).
        transfer: made on the dense network (stochastic layers off, same weights) whatever
            :meth:`run`'s ``stochastic`` says: a transfer attack.
        timed: run only on some steps (RL's strategically timed attack); :meth:`run` itself
            attacks every input it is given, the caller chooses the steps.
    """

    name: str
    kind: str
    steps: int = 1
    least_likely: bool = False
    eot: bool = False
    loss: str = "ce"
    restarts: int = 1
    transfer: bool = False
    timed: bool = False

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
        stochastic: bool = True,
    ) -> torch.Tensor:
        """Attack ``x`` with budget ``eps``; an all-zero budget returns ``x`` without a model call.

        ``eot_samples`` is used only by ``-eot`` attacks; ``generator`` seeds every random choice
        of the attack (PGD starts, the AutoAttack code's seed). ``stochastic=False`` makes the
        attack on the model with its stochastic layers off, i.e. on the dense network with the same
        weights (a transfer attack, when the result is then given to the defended model); a
        ``transfer-`` spec always does.

        Example:
            >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
            >>> x = torch.randint(0, 256, (2, 1, 4, 4)).float()
            >>> x_adv = parse_attack("pgd-5-cw-r2").run(net, x, 2.0)
            >>> bool((x_adv - x).abs().max() <= 2.0)
            True
        """
        if isinstance(eps, (int, float)) and eps == 0:
            _validate(x, eps, 1)
            return x.detach().clone()
        stochastic = stochastic and not self.transfer
        # The dense network has no randomness: its EOT average is one pass.
        samples = eot_samples if self.eot and stochastic else 1
        if self.kind == "apgd":
            return apgd(
                model, x, eps, loss="dlr" if self.loss == "dlr" else "ce", steps=self.steps,
                target=target, samples=samples, generator=generator, max_batch=max_batch,
                stochastic=stochastic,
            )  # fmt: skip
        if self.kind == "square":
            return square(
                model, x, eps, queries=self.steps, target=target, samples=samples,
                generator=generator, max_batch=max_batch, stochastic=stochastic,
            )  # fmt: skip
        if self.kind == "fgsm":
            if self.least_likely:
                return fgsm_ll(
                    model, x, eps, samples=samples, max_batch=max_batch, stochastic=stochastic
                )
            return fgsm(
                model, x, eps, target=target, samples=samples, max_batch=max_batch,
                stochastic=stochastic,
            )  # fmt: skip
        if self.least_likely:
            return pgd_ll(
                model, x, eps, steps=self.steps, random_start=self.restarts > 1,
                samples=samples, generator=generator, max_batch=max_batch, restarts=self.restarts,
                stochastic=stochastic,
            )  # fmt: skip
        return pgd(
            model, x, eps, steps=self.steps, target=target, samples=samples, generator=generator,
            max_batch=max_batch, loss="cw" if self.loss == "cw" else "ce", restarts=self.restarts,
            stochastic=stochastic,
        )  # fmt: skip


def _count(name: str, digits: str | None, default: int, bound: int, what: str, form: str) -> int:
    """The count ``digits`` (``default`` when absent), refusing 0 and values above ``bound``."""
    if digits is None:
        return default
    digits = digits.lstrip("0")
    if not digits:  # pgd-0, square-00
        raise UserError(f"unknown attack {name!r}; valid attacks: {ATTACK_NAMES_HELP}")
    # Compare the digits before int(): Python refuses to convert thousands of them.
    if len(digits) > len(str(bound)) or int(digits) > bound:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise UserError(f"attack {shown!r}: at most {bound} {what} ({form})")
    return int(digits)


def parse_attack(name: str) -> AttackSpec:
    """Parse an attack name such as ``fgsm-eot``, ``pgd-10-cw-r5`` or ``apgd-dlr-eot``.

    See the module docstring for the grammar.

    Raises:
        UserError: for an unknown name (the message lists the valid forms), a count above its
            bound, or an AutoAttack name when the AutoAttack code is not installed.

    Example:
        >>> parse_attack("pgd-10-eot")  # doctest: +ELLIPSIS
        AttackSpec(name='pgd-10-eot', kind='pgd', steps=10, least_likely=False, eot=True, ...)
        >>> spec = parse_attack("PGD-20-CW-R5")
        >>> spec.name, spec.loss, spec.restarts
        ('pgd-20-cw-r5', 'cw', 5)
        >>> parse_attack("apgd-dlr-eot").steps
        100
        >>> parse_attack("transfer-pgd-10").transfer
        True
        >>> spec = parse_attack("timed-transfer-fgsm")
        >>> spec.timed, spec.transfer, spec.kind
        (True, True, 'fgsm')
        >>> parse_attack("pgd-1000000")
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: attack 'pgd-1000000': at most 1000 PGD steps (pgd-1 to pgd-1000)
    """
    text = name.strip().lower() if isinstance(name, str) else ""
    for prefix, flag in ((TIMED_PREFIX, "timed"), (TRANSFER_PREFIX, "transfer")):
        if not text.startswith(prefix):
            continue
        base = text[len(prefix) :]
        # timed- comes first, each prefix at most once: timed-transfer-fgsm, not transfer-timed-
        if not base or base.startswith(prefix) or (flag == "transfer" and "timed-" in base):
            raise UserError(f"unknown attack {name!r}; valid attacks: {ATTACK_NAMES_HELP}")
        try:
            spec = parse_attack(base)
        except UserError as err:
            if str(err).startswith("unknown attack"):  # name the whole name, not its base
                raise UserError(
                    f"unknown attack {name!r}; valid attacks: {ATTACK_NAMES_HELP}"
                ) from None
            raise
        if flag == "timed":
            return replace(spec, name=prefix + spec.name, timed=True)
        return replace(spec, name=prefix + spec.name, transfer=True)
    found = [(kind, m) for kind, p in _PATTERNS.items() if (m := p.match(text)) is not None]
    if not found:
        raise UserError(f"unknown attack {name!r}; valid attacks: {ATTACK_NAMES_HELP}")
    kind, match = found[0]
    groups = match.groupdict()
    shown = name.strip()
    eot = groups["eot"] is not None
    if kind == "fgsm":
        return AttackSpec(text, "fgsm", least_likely=groups["ll"] is not None, eot=eot)
    if kind == "pgd":
        steps = _count(
            shown, groups["steps"], 1, MAX_ATTACK_STEPS, "PGD steps",
            f"pgd-1 to pgd-{MAX_ATTACK_STEPS}",
        )  # fmt: skip
        restarts = _count(
            shown, groups["restarts"], 1, MAX_ATTACK_RESTARTS, "restarts",
            f"-r1 to -r{MAX_ATTACK_RESTARTS}",
        )  # fmt: skip
        return AttackSpec(
            text, "pgd", steps=steps, least_likely=groups["ll"] is not None, eot=eot,
            loss="cw" if groups["loss"] == "cw" else "ce", restarts=restarts,
        )  # fmt: skip
    require_autoattack(text)
    if kind == "apgd":
        base = f"apgd-{groups['loss']}"
        steps = _count(
            shown, groups["steps"], APGD_STEPS, MAX_ATTACK_STEPS, "APGD steps",
            f"{base}-1 to {base}-{MAX_ATTACK_STEPS}",
        )  # fmt: skip
        return AttackSpec(text, "apgd", steps=steps, eot=eot, loss=groups["loss"])
    queries = _count(
        shown, groups["steps"], SQUARE_QUERIES, MAX_SQUARE_QUERIES, "Square queries",
        f"square-1 to square-{MAX_SQUARE_QUERIES}",
    )  # fmt: skip
    return AttackSpec(text, "square", steps=queries, eot=eot, loss="margin")
