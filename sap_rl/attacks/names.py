"""Attack names, their bounds and the grammar's help text, without torch.

The command line's help lists the attack grammar; ``sap-rl --help`` and every sub-command's help
must start without importing torch (a second or more), so everything a help text or a config
check needs about attack names lives here, and :mod:`sap_rl.attacks.spec` (which runs attacks,
with torch) imports it from here. ``import sap_rl.attacks.names`` runs the package's
``__init__``, which imports the torch modules only when one of their names is first used.

Example:
    >>> "transfer-<attack>" in ATTACK_NAMES_HELP and "timed-<attack>" in ATTACK_NAMES_HELP
    True
    >>> MAX_ATTACK_STEPS, check_eot_samples(1)
    (1000, 1)
"""

from __future__ import annotations

from sap_rl.errors import UserError

__all__ = [
    "APGD_STEPS",
    "ATTACK_NAMES_HELP",
    "MAX_ATTACK_RESTARTS",
    "MAX_ATTACK_STEPS",
    "MAX_EOT_SAMPLES",
    "MAX_SQUARE_QUERIES",
    "SQUARE_QUERIES",
    "TIMED_PREFIX",
    "TRANSFER_PREFIX",
    "VISION_ATTACK_NAMES_HELP",
    "check_eot_samples",
]

#: Most PGD or APGD steps an attack name may ask for (the literature uses 10 to 100).
MAX_ATTACK_STEPS = 1000
#: Most random restarts a ``pgd-<steps>-r<k>`` name may ask for (Madry et al. used up to 50).
MAX_ATTACK_RESTARTS = 100
#: Most queries a ``square-<queries>`` name may ask for (AutoAttack uses 5000).
MAX_SQUARE_QUERIES = 10000
#: Most stochastic passes one ``-eot`` gradient may average (``eot_samples``), for the same reason.
MAX_EOT_SAMPLES = 1000
#: APGD iterations and Square queries in AutoAttack's standard and ``rand`` versions.
APGD_STEPS = 100
SQUARE_QUERIES = 5000

#: Prefix of a strategically timed attack (RL only; Lin et al. 2017).
TIMED_PREFIX = "timed-"
#: Prefix of an attack made on the dense network and applied to the defended one.
TRANSFER_PREFIX = "transfer-"

#: The grammar in one line for a classifier's ``--attack`` help (no timed attacks there).
VISION_ATTACK_NAMES_HELP = (
    f"fgsm, fgsm-ll, pgd-<steps> (1 to {MAX_ATTACK_STEPS}) with optional -cw (margin loss) or -ll, "
    f"then -r<restarts> (1 to {MAX_ATTACK_RESTARTS}), apgd-ce and apgd-dlr (optional -<steps>, "
    f"default {APGD_STEPS}), square (optional -<queries>, default {SQUARE_QUERIES}, at most "
    f"{MAX_SQUARE_QUERIES}), and each with an -eot suffix (averaged over the defense's "
    "randomness), e.g. fgsm-eot, pgd-10-eot, pgd-20-cw-r5, apgd-ce-eot, square-1000; "
    "transfer-<attack> makes any of them on the dense network (e.g. transfer-pgd-10)"
)
#: The whole grammar in one line, for ``sap-rl evaluate --attack``'s help and error messages.
ATTACK_NAMES_HELP = (
    f"{VISION_ATTACK_NAMES_HELP}; in RL, timed-<attack> attacks only the steps where the agent's "
    "preference exceeds a threshold"
)


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
