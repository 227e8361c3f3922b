"""Named inference-time defenses built on a trained model, without retraining.

=================  ==========================================================================
name               defense
=================  ==========================================================================
``dense``          the unmodified network
``sap-<k>``        SAP-k after every ReLU (``sap-100``, ``sap-50``, ...), exact sampling
``sap-<k>-fast``   SAP-k with independent keep decisions (same marginals, faster)
``dropout-<p>``    inverted dropout with drop probability ``p`` after every ReLU, active at
                   inference (the SAP paper's stochastic baseline)
``noise-<sigma>``  Gaussian noise of ``sigma`` pixel levels added to the input, clipped to [0, 255]
=================  ==========================================================================

All stochastic layers are :class:`sap_rl.sap.StochasticModule` s: random whenever enabled,
whatever the train/eval mode, and switched off together by :func:`sap_rl.sap.deterministic`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> defended = apply_defense(net, "sap-50")
    >>> defended is not net and parse_defense("sap-50").stochastic
    True
    >>> torch.equal(apply_defense(net, "dense")(torch.ones(1, 4)), net(torch.ones(1, 4)))
    True
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.sap import (
    ActivationWrapper,
    StochasticModule,
    apply_sap,
    insert_after_relu,
)

__all__ = [
    "DEFENSE_NAMES_HELP",
    "AlwaysDropout",
    "DefenseSpec",
    "InputNoise",
    "apply_defense",
    "parse_defense",
    "strip_defenses",
]

DEFENSE_NAMES_HELP = (
    "dense, sap-<k> (e.g. sap-100, sap-50), sap-<k>-fast, dropout-<p>, noise-<sigma>"
)
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_PATTERNS = {
    "dense": re.compile(r"^dense$"),
    "sap": re.compile(rf"^sap-{_NUMBER}(?P<fast>-fast)?$"),
    "dropout": re.compile(rf"^dropout-{_NUMBER}$"),
    "noise": re.compile(rf"^noise-{_NUMBER}$"),
}


class AlwaysDropout(StochasticModule):
    """Inverted dropout that stays on at inference (drop with probability ``p``, scale by 1/(1-p)).

    Example:
        >>> layer = AlwaysDropout(0.5, generator=torch.Generator().manual_seed(0)).eval()
        >>> out = layer(torch.ones(1, 1000))
        >>> sorted(set(out.unique().tolist()))
        [0.0, 2.0]
    """

    def __init__(self, p: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.p == 0.0:
            return x
        u = torch.rand(x.shape, generator=self.generator, dtype=torch.float32)
        keep = (u >= self.p).to(device=x.device, dtype=x.dtype)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, enabled={self.enabled}"


class InputNoise(StochasticModule):
    """Adds Gaussian noise of ``sigma`` pixel levels to a [0, 255] input and clips to [0, 255]."""

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0 pixel levels, got {sigma}")
        self.sigma = float(sigma)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.sigma == 0.0:
            return x
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32)
        return (x + self.sigma * noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 255.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, enabled={self.enabled}"


class DropoutActivation(ActivationWrapper):
    """A ReLU followed by :class:`AlwaysDropout`."""


@dataclass(frozen=True)
class DefenseSpec:
    """A parsed defense name; ``value`` is k (SAP), p (dropout) or sigma (noise)."""

    name: str
    kind: str
    value: float = 0.0
    fast: bool = False

    @property
    def stochastic(self) -> bool:
        """Whether the defended model's output is random (needs Monte Carlo / EOT)."""
        return self.kind != "dense" and self.value > 0

    def apply(self, model: nn.Module) -> nn.Module:
        """Return a defended deep copy of ``model`` (the original is not modified).

        The defense is built on the dense network: any SAP, dropout or input-noise layer that a
        defense (or :func:`sap_rl.sap.apply_sap`) already put into ``model`` is removed from the
        copy first, so defenses replace each other instead of stacking.
        """
        defended = strip_defenses(copy.deepcopy(model))
        if self.kind == "sap":
            return apply_sap(defended, self.value / 100.0, "fast" if self.fast else "exact")
        if self.kind == "dropout":
            n = insert_after_relu(
                defended, lambda r: DropoutActivation(r, AlwaysDropout(self.value))
            )
            if n == 0:
                raise ValueError(f"{type(model).__name__} has no nn.ReLU module for dropout")
            return defended
        if self.kind == "noise":
            return nn.Sequential(InputNoise(self.value), defended)
        return defended


def strip_defenses(model: nn.Module) -> nn.Module:
    """Remove every defense layer from ``model`` in place and return the dense network.

    Each :class:`~sap_rl.sap.ActivationWrapper` (SAP or dropout after a ReLU) becomes its ReLU
    again, and the input-noise wrapper that the ``noise-<sigma>`` defense puts in front of a model
    is unwrapped (so the returned module may be a child of ``model``). Parameters are untouched.

    Example:
        >>> from sap_rl.sap import apply_sap, stochastic_modules
        >>> net = apply_sap(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
        >>> stochastic_modules(strip_defenses(net)), type(net[1]).__name__
        ([], 'ReLU')
    """
    # The noise defense wraps the model as Sequential(InputNoise, model); peel every such layer.
    while isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], InputNoise):
        model = model[1]
    _unwrap_activations(model)
    return model


def _unwrap_activations(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, ActivationWrapper):
            setattr(model, name, child.activation)
        else:
            _unwrap_activations(child)


def parse_defense(name: str) -> DefenseSpec:
    """Parse a defense name (see the module table).

    Raises:
        UserError: unknown name or out-of-range value, with the list of valid names.

    Example:
        >>> parse_defense("sap-100-fast")
        DefenseSpec(name='sap-100-fast', kind='sap', value=100.0, fast=True)
    """
    text = name.strip().lower()
    for kind, pattern in _PATTERNS.items():
        match = pattern.match(text)
        if match is None:
            continue
        value = float(match.group(1)) if kind != "dense" else 0.0
        if kind == "sap" and value <= 0:
            raise UserError(f"defense {name!r}: SAP needs k > 0 (e.g. sap-100)")
        if kind == "dropout" and not value < 1:
            raise UserError(f"defense {name!r}: dropout probability must be in [0, 1)")
        fast = kind == "sap" and match.group("fast") is not None
        return DefenseSpec(name=text, kind=kind, value=value, fast=fast)
    raise UserError(f"unknown defense {name!r}; valid defenses: {DEFENSE_NAMES_HELP}")


def apply_defense(model: nn.Module, defense: str | DefenseSpec) -> nn.Module:
    """Return a defended deep copy of ``model`` for a defense name or spec.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> apply_defense(net, "noise-2")[0]
        InputNoise(sigma=2.0, enabled=True)
    """
    spec = parse_defense(defense) if isinstance(defense, str) else defense
    return spec.apply(model)
