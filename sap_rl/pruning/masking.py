"""Score-based weight masks with learned per-layer keep rates (the HARP layer).

Every prunable layer (``nn.Linear`` and ``nn.Conv1d/2d/3d``) is wrapped in a :class:`MaskedLayer`
that keeps the layer's weights and adds

- ``scores``, one learned importance score per weight, and
- ``rate_score``, one learned number whose sigmoid, mapped into ``[k_min, 1]``, is the layer's
  keep rate ``k`` (:func:`keep_rate`).

The forward pass multiplies the weights by a binary mask that keeps exactly
:func:`kept_count` ``(k, n)`` weights, those with the largest ``|score|``. The top-k choice has no
gradient, so :class:`TopKMask` passes the mask's gradient straight through to the scores, and its
sum to the rate (Ramanujan et al. 2020; Zhao and Wressnegger 2023).

Example:
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> wrapped = wrap_model(net, {"0": 0.25, "2": 0.5}, k_min=0.1)
    >>> [int(layer.mask().sum()) for layer in masked_layers(wrapped).values()]
    [8, 4]
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.errors import UserError

__all__ = [
    "PRUNABLE_TYPES",
    "MaskedLayer",
    "TopKMask",
    "keep_rate",
    "kept_count",
    "masked_layers",
    "prunable_layers",
    "rate_score_for",
    "topk_mask",
    "unwrap_model",
    "weight_of",
    "wrap_model",
]

#: Layer types whose weights HARP prunes.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

MaskMode = Literal["learn", "fixed"]


def weight_of(layer: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor of a Conv/Linear layer (typed, for the type checker).

    Example:
        >>> weight_of(nn.Linear(3, 2)).shape
        torch.Size([2, 3])
    """
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__} has no weight tensor")
    return weight


def kept_count(rate: float, numel: int) -> int:
    """Weights a layer of ``numel`` weights keeps at keep rate ``rate``: at least one, at most all.

    Example:
        >>> kept_count(0.1, 1000), kept_count(0.0001, 1000), kept_count(1.0, 7)
        (100, 1, 7)
    """
    return max(1, min(numel, round(rate * numel)))


def topk_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A 0/1 mask (``scores``' shape and dtype) with ones at the ``count`` largest ``scores``.

    Example:
        >>> topk_mask(torch.tensor([0.3, -1.0, 2.0, 0.1]), 2)
        tensor([1., 0., 1., 0.])
    """
    flat = scores.detach().flatten()
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, count, sorted=False).indices] = 1.0
    return mask.view_as(scores)


class TopKMask(torch.autograd.Function):
    """Top-k mask of ``|scores|`` at keep rate ``k``, with straight-through gradients.

    Forward: :func:`topk_mask` of the scores with :func:`kept_count` ``(k, n)`` ones. Backward: the
    mask's gradient goes unchanged to the scores, and its sum to ``k`` (keeping one more weight
    changes the output as the mask's gradient, summed, says).
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return topk_mask(scores, kept_count(float(k), scores.numel()))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad.sum()


def keep_rate(rate_score: torch.Tensor, k_min: float) -> torch.Tensor:
    """``k_min + (1 - k_min) * sigmoid(rate_score)``: a keep rate inside ``[k_min, 1]``.

    Example:
        >>> keep_rate(torch.tensor(0.0), 0.2).item()
        0.6000000238418579
    """
    return k_min + (1.0 - k_min) * torch.sigmoid(rate_score)


def rate_score_for(rate: float, k_min: float) -> float:
    """The ``rate_score`` whose :func:`keep_rate` is ``rate`` (clipped just inside the range).

    Example:
        >>> round(keep_rate(torch.tensor(rate_score_for(0.3, 0.1)), 0.1).item(), 6)
        0.3
    """
    p = (rate - k_min) / (1.0 - k_min)
    p = min(max(p, 1e-4), 1.0 - 1e-4)  # sigmoid never reaches 0 or 1
    return math.log(p / (1.0 - p))


class MaskedLayer(nn.Module):
    """A Conv/Linear layer whose forward pass uses only its top-k weights by learned score.

    Args:
        layer: the layer to wrap (its weights are used, not copied).
        rate: initial keep rate, inside ``[k_min, 1]``.
        k_min: smallest keep rate the learned rate may reach.

    Attributes:
        layer: the wrapped layer.
        scores: importance scores, initialised to ``|w| * sqrt(6 / fan_in) / max |w|`` so that the
            first mask is the magnitude mask and scores of all layers are on one scale.
        rate_score: the learned rate's logit (:func:`keep_rate`).
        mode: ``learn`` (mask from the scores and the learned rate, gradients to both) or
            ``fixed`` (the mask in the ``fixed_mask`` buffer; only the weights learn).
    """

    fixed_mask: torch.Tensor

    def __init__(self, layer: nn.Module, rate: float, k_min: float) -> None:
        super().__init__()
        if not isinstance(layer, PRUNABLE_TYPES):
            raise TypeError(f"cannot mask a {type(layer).__name__}")
        if not 0.0 < k_min < 1.0:
            raise ValueError(f"k_min must be in (0, 1), got {k_min}")
        self.layer = layer
        for param in layer.parameters():
            param.requires_grad_(False)  # HARP learns scores and rates over frozen weights
        self.k_min = float(k_min)
        weight = weight_of(layer).detach()
        fan_in = weight[0].numel()
        top = float(weight.abs().max())
        scale = math.sqrt(6.0 / fan_in) / (top if top > 0 else 1.0)
        self.scores = nn.Parameter(weight.abs() * scale)
        self.rate_score = nn.Parameter(torch.tensor(rate_score_for(rate, self.k_min)))
        self.register_buffer("fixed_mask", torch.ones_like(weight))
        self.mode: MaskMode = "learn"

    @property
    def numel(self) -> int:
        """Number of weights."""
        return weight_of(self.layer).numel()

    def rate(self) -> torch.Tensor:
        """The current keep rate (differentiable in ``learn`` mode; the mask's share when fixed)."""
        if self.mode == "fixed":
            return self.fixed_mask.mean()
        return keep_rate(self.rate_score, self.k_min)

    def mask(self) -> torch.Tensor:
        """The current 0/1 mask (straight-through differentiable in ``learn`` mode)."""
        if self.mode == "fixed":
            return self.fixed_mask
        return TopKMask.apply(self.scores.abs(), self.rate())

    def fix(self, count: int | None = None) -> None:
        """Freeze the mask to the top ``count`` weights by score (default: the learned rate's).

        From then on the scores and rate are frozen and the layer's weights learn.
        """
        if count is None:
            count = kept_count(float(self.rate().detach()), self.numel)
        self.fixed_mask.copy_(topk_mask(self.scores.detach().abs(), count))
        self.set_mode("fixed")

    def set_mode(self, mode: MaskMode) -> None:
        """Switch to ``mode`` and set which tensors learn, keeping ``fixed_mask`` as it is.

        A resumed HARP run loads ``fixed_mask`` from its checkpoint and calls this instead of
        :meth:`fix`, so the mask is the saved one rather than recomputed from the scores.

        Example:
            >>> layer = MaskedLayer(nn.Linear(4, 2), 0.5, k_min=0.1)
            >>> layer.set_mode("fixed")
            >>> layer.scores.requires_grad, layer.layer.weight.requires_grad
            (False, True)
        """
        if mode not in ("learn", "fixed"):
            raise ValueError(f"mode must be learn or fixed, got {mode!r}")
        self.mode = mode
        learn = mode == "learn"
        self.scores.requires_grad_(learn)
        self.rate_score.requires_grad_(learn)
        for param in self.layer.parameters():
            param.requires_grad_(not learn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = weight_of(self.layer) * self.mask()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)  # type: ignore[operator]

    def extra_repr(self) -> str:
        return f"mode={self.mode}, k_min={self.k_min:g}"


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The model's Conv/Linear layers by name, minus those matching an ``exclude`` glob pattern.

    Raises:
        UserError: no layer is left to prune.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        >>> list(prunable_layers(net)), list(prunable_layers(net, exclude=["3"]))
        (['0', '3'], ['0'])
    """
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and not _excluded(name, exclude)
    }
    if not layers:
        kinds = ", ".join(t.__name__ for t in PRUNABLE_TYPES)
        raise UserError(
            f"the model has no prunable layers ({kinds}"
            + (f" not matching exclude {list(exclude)}" if exclude else "")
            + ")"
        )
    return layers


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def wrap_model(model: nn.Module, rates: dict[str, float], *, k_min: float) -> nn.Module:
    """Replace each layer named in ``rates`` by a :class:`MaskedLayer` (in place; returns model).

    The wrapped layers' weights and biases stop requiring gradients (HARP learns scores and rates
    over frozen weights); other parameters (batch norm) are untouched.
    """
    for name, rate in rates.items():
        layer = model.get_submodule(name)
        _set_child(model, name, MaskedLayer(layer, rate, k_min).to(weight_of(layer).device))
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedLayer]:
    """The model's :class:`MaskedLayer` modules by the name of the layer each one wraps."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLayer)}


def unwrap_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Put each wrapped layer back with its masked-out weights set to zero; return the masks.

    Returns:
        ``{"<layer>.weight": bool mask}`` for every wrapped layer (names as in the unwrapped
        model's ``state_dict``).
    """
    masks: dict[str, torch.Tensor] = {}
    for name, wrapper in masked_layers(model).items():
        mask = wrapper.mask().detach().bool()
        layer = wrapper.layer
        with torch.no_grad():
            weight_of(layer).mul_(mask)
        for param in layer.parameters():
            param.requires_grad_(True)
        _set_child(model, name, layer)
        masks[f"{name}.weight"] = mask.cpu()
    return masks
