"""Stochastic Activation Pruning (SAP), Algorithm 1 of Dhillon et al., ICLR 2018.

For one example and one layer with activations ``h`` (``a`` elements):

- ``p_j = |h_j| / sum_k |h_k|``;
- draw ``r = round(ratio * a)`` indices **with replacement** from Categorical(p)
  (SAP-k: ratio = k/100);
- ``out_j = h_j / (1 - (1 - p_j)^r)`` if ``j`` was drawn at least once, else 0,

so that ``E[out] = h`` exactly. Sampling is per example over all non-batch dimensions.
``mode="fast"`` keeps each element independently with probability ``1 - (1 - p_j)^r`` instead
(same marginals, same expectation, no cap of ``r`` distinct survivors) and is cheaper.

In the backward pass the mask and the scale are constants, as in the authors' operator:
``grad_in = grad_out * mask * scale``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> _ = apply_sap(net, ratio=1.0)           # SAP-100 after every ReLU, no retraining
    >>> x = torch.randn(4, 8)
    >>> net(x).shape
    torch.Size([4, 3])
    >>> with deterministic(net):                 # SAP off: the original dense network
    ...     dense = net(x)
    >>> torch.equal(dense, remove_sap(net)(x))
    True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "SAP",
    "ActivationWrapper",
    "SAPActivation",
    "StochasticModule",
    "apply_sap",
    "deterministic",
    "insert_after_relu",
    "mc_average",
    "num_draws",
    "remove_sap",
    "sap",
    "sap_multiplier",
    "stochastic_modules",
]

Mode = Literal["exact", "fast"]
_MODES = ("exact", "fast")
_SEED_HIGH = 2**62


def num_draws(ratio: float, num_elements: int) -> int:
    """Number of draws ``r = round(ratio * a)`` for SAP-(100 * ratio) on a layer of ``a`` elements.

    At least one draw is made, so a tiny ratio on a tiny layer still keeps something.

    Example:
        >>> num_draws(1.0, 12800), num_draws(0.5, 3), num_draws(0.01, 10)
        (12800, 2, 1)
    """
    return max(1, round(ratio * num_elements))


def sap_multiplier(
    x: torch.Tensor,
    ratio: float = 1.0,
    *,
    mode: str = "exact",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The SAP multiplier ``mask * scale`` for ``x``, so that ``sap(x) == x * multiplier``.

    Returned as float32 (float64 for float64 input) with the shape of ``x`` and no gradient;
    kept elements hold ``1 / (1 - (1 - p_j)^r)``, pruned elements hold 0. Near the float limits
    the scale saturates instead of overflowing: it never exceeds the multiplier dtype's largest
    value, nor makes ``|x_j| * scale`` exceed 99% of the largest value of ``x``'s dtype.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = sap_multiplier(torch.tensor([[0.0, 1.0, 3.0]]), 1.0, generator=g)
        >>> bool(m[0, 0] == 0)                   # a zero activation is never drawn
        True
    """
    _validate(x, ratio, mode)
    flat = x.detach().reshape(x.shape[0], -1)
    r = num_draws(ratio, flat.shape[1])
    if flat.device.type == "cpu":
        mult = _multiplier_cpu(flat, r, mode, generator)
    else:
        mult = _multiplier_torch(flat, r, mode, generator)
    return mult.view(x.shape)


def sap(
    x: torch.Tensor,
    ratio: float = 1.0,
    *,
    mode: str = "exact",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply SAP to a batch of activations (first dimension = batch), unbiased: ``E[sap(x)] = x``.

    Args:
        x: floating tensor of shape (B, ...); each example is pruned independently over all of
            its non-batch elements.
        ratio: ``k / 100`` for SAP-k; the number of draws is ``round(ratio * a)`` (at least 1).
        mode: ``"exact"`` (``r`` draws with replacement, Algorithm 1) or ``"fast"`` (independent
            keep decisions with the same marginals).
        generator: source of randomness; the same generator state gives the same output.

    Returns:
        A tensor like ``x``. Gradients flow as ``grad * mask * scale``.

    Raises:
        ValueError: for ``ratio <= 0``, an unknown ``mode``, a non-floating or 0-d/1-d ``x``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 4)
        >>> y = sap(x, 1.0, generator=g)
        >>> y.shape == x.shape and bool(((y == 0) | (y.abs() >= x.abs())).all())
        True
    """
    mult = sap_multiplier(x, ratio, mode=mode, generator=generator)
    if x.dtype in (torch.float32, torch.float64):
        return x * mult
    # float16 / bfloat16: scale in float32 so that a large 1/q on a tiny activation cannot overflow.
    return (x.float() * mult).to(x.dtype)


def _validate(x: torch.Tensor, ratio: float, mode: str) -> None:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"SAP needs a floating-point tensor, got {kind}; convert with x.float()")
    if x.ndim < 2:
        raise ValueError(
            f"SAP needs a batch of shape (B, ...) with at least 2 dimensions, got shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
        )
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or ratio <= 0
    ):
        raise ValueError(
            f"SAP ratio must be a finite number > 0 (SAP-k uses ratio = k/100), got {ratio!r}"
        )
    if mode not in _MODES:
        raise ValueError(f"unknown SAP mode {mode!r}; use 'exact' or 'fast'")


def _seed_from(generator: torch.Generator | None) -> np.uint64:
    return np.uint64(int(torch.randint(0, _SEED_HIGH, (), generator=generator)))


def _neg_keep_prob(flat: torch.Tensor, r: int) -> torch.Tensor:
    """``-q = (1 - p)^r - 1`` with ``p = |x| / sum|x|`` per row, as ``expm1(r * log1p(-p))``.

    Negated to save two passes over the data (the kernels flip the sign back). float32 (float64
    for float64 input); an all-zero row gives q = 0 everywhere. Rows whose sum overflows float32
    (values near the float limits) are redone in float64.
    """
    work_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    p = flat.abs() if flat.dtype == work_dtype else flat.to(work_dtype).abs()
    total = p.sum(dim=1, keepdim=True)
    if not bool(torch.isfinite(total).all()):
        p64 = flat.to(torch.float64).abs()
        total64 = p64.sum(dim=1, keepdim=True)
        return _neg_q_from(p64, total64, r).to(work_dtype)
    return _neg_q_from(p, total, r)


def _neg_q_from(p: torch.Tensor, total: torch.Tensor, r: int) -> torch.Tensor:
    p.div_(torch.where(total > 0, -total, -1.0))  # now -p
    return p.log1p_().mul_(r).expm1_()


def _caps(x_dtype: torch.dtype, work_dtype: torch.dtype) -> tuple[float, float]:
    """Largest multiplier (work dtype) and largest |output| (x's dtype, 1% rounding margin)."""
    return float(torch.finfo(work_dtype).max), float(torch.finfo(x_dtype).max) * 0.99


def _match_torch_threads() -> int:
    """Run numba kernels on as many threads as torch uses; return torch's count.

    numba's OpenMP layer shares libgomp with torch and resets the process-wide OpenMP thread count
    when its pool starts, so callers restore torch's count afterwards (see :func:`_multiplier_cpu`).
    """
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    return threads


def _multiplier_cpu(
    flat: torch.Tensor, r: int, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    from sap_rl import _sap_kernels

    threads = _match_torch_threads()
    try:
        return _fill_cpu(_sap_kernels, flat, r, mode, generator)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _fill_cpu(
    kernels: Any, flat: torch.Tensor, r: int, mode: str, generator: torch.Generator | None
) -> torch.Tensor:

    neg_q = _neg_keep_prob(flat, r).contiguous()
    h = (flat if flat.dtype == neg_q.dtype else flat.to(neg_q.dtype)).contiguous().numpy()
    neg_q_np = neg_q.numpy()
    m_cap, out_cap = _caps(flat.dtype, neg_q.dtype)
    seed = _seed_from(generator)
    if mode == "exact":
        out = np.empty_like(neg_q_np)
        kernels.exact_fill(h, neg_q_np, r, seed, m_cap, out_cap, out)
        return torch.from_numpy(out)
    kernels.fast_fill(h, neg_q_np, seed, m_cap, out_cap, neg_q_np)
    return neg_q


def _multiplier_torch(
    flat: torch.Tensor, r: int, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Device-agnostic reference implementation (used on GPUs and in tests)."""
    work = flat.abs().to(torch.float64)
    n_rows, a = work.shape
    total = work.sum(dim=1, keepdim=True)
    valid = (total > 0) & torch.isfinite(total)
    p = torch.where(valid, work / torch.where(valid, total, 1.0), 0.0)
    keep_prob = -torch.expm1(r * torch.log1p(-p.clamp(max=1.0)))
    if mode == "exact":
        cdf = work.cumsum(dim=1)
        u = torch.rand(n_rows, r, generator=generator, device=flat.device, dtype=torch.float64)
        idx = torch.searchsorted(cdf, u * total, right=True)
        # u * total may round up to total: fall back onto the last element with positive mass.
        positions = torch.arange(a, device=flat.device).expand(n_rows, a)
        last_nonzero = torch.where(work > 0, positions, -1).amax(dim=1, keepdim=True).clamp(min=0)
        idx = torch.minimum(idx, last_nonzero)
        drawn = torch.zeros(n_rows, a, dtype=torch.bool, device=flat.device)
        drawn.scatter_(1, idx, True)
    else:
        u = torch.rand(n_rows, a, generator=generator, device=flat.device, dtype=torch.float64)
        drawn = u < keep_prob
    drawn &= (p > 0) & valid
    out_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    m_cap, out_cap = _caps(flat.dtype, out_dtype)
    scale = torch.minimum(keep_prob.reciprocal().clamp(max=m_cap), out_cap / work)
    return torch.where(drawn, scale, 0.0).to(out_dtype)


class StochasticModule(nn.Module):
    """Base class for layers that stay random at inference whenever ``enabled`` is true.

    Unlike ``nn.Dropout``, these layers ignore ``model.train()`` / ``model.eval()``: attack
    libraries force eval mode, and a defense must not silently switch itself off. Use
    :func:`deterministic` to turn every such layer off temporarily.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled


class SAP(StochasticModule):
    """Stochastic Activation Pruning as a layer (identity when ``enabled`` is false).

    Args:
        ratio: ``k / 100`` for SAP-k (``1.0`` = SAP-100).
        mode: ``"exact"`` or ``"fast"`` (see :func:`sap`).
        enabled: whether the layer prunes; independent of train/eval mode.
        generator: optional ``torch.Generator`` for reproducible draws.

    Example:
        >>> layer = SAP(0.5).eval()               # still stochastic in eval mode
        >>> layer(torch.ones(2, 10)).count_nonzero().item() <= 10
        True
    """

    def __init__(
        self,
        ratio: float = 1.0,
        mode: str = "exact",
        *,
        enabled: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(enabled=enabled)
        _validate(torch.zeros(1, 1), ratio, mode)
        self.ratio = float(ratio)
        self.mode = mode
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return sap(x, self.ratio, mode=self.mode, generator=self.generator)

    def extra_repr(self) -> str:
        return f"k={100 * self.ratio:g}, mode={self.mode!r}, enabled={self.enabled}"


class ActivationWrapper(nn.Module):
    """An activation followed by a (stochastic) layer; the unit that defenses insert after ReLUs."""

    def __init__(self, activation: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.activation(x))


class SAPActivation(ActivationWrapper):
    """A ReLU followed by :class:`SAP`; what :func:`apply_sap` puts in place of each ``nn.ReLU``."""

    layer: SAP


def insert_after_relu(model: nn.Module, make: Callable[[nn.ReLU], ActivationWrapper]) -> int:
    """Replace every ``nn.ReLU`` in ``model`` by ``make(relu)``, in place; returns how many.

    Activations already inside an :class:`ActivationWrapper` are left alone, so defenses never
    stack twice on one ReLU.
    """
    count = 0
    for name, child in model.named_children():
        if isinstance(child, ActivationWrapper):
            continue
        if isinstance(child, nn.ReLU):
            setattr(model, name, make(child))
            count += 1
        else:
            count += insert_after_relu(child, make)
    return count


def apply_sap(model: nn.Module, ratio: float = 1.0, mode: str = "exact") -> nn.Module:
    """Insert SAP after every ``nn.ReLU`` of a trained model, in place, and return the model.

    Works on any module tree (stable-baselines3's Q-network, ResNet-20, ``nn.Sequential``...).
    A model that already has SAP gets its ratio and mode updated instead of a second SAP.
    Parameters and ``state_dict`` keys are unchanged, so no retraining or re-loading is needed.

    Raises:
        ValueError: if the model contains no ``nn.ReLU`` module (functional ``F.relu`` calls
            cannot be seen; use ``nn.ReLU`` modules), or for a bad ratio/mode.

    Example:
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2), nn.ReLU()
        ... )
        >>> len(stochastic_modules(apply_sap(net, 0.5)))
        2
    """
    _validate(torch.zeros(1, 1), ratio, mode)
    existing = [m for m in model.modules() if isinstance(m, SAPActivation)]
    for wrapper in existing:
        wrapper.layer.ratio, wrapper.layer.mode = float(ratio), mode
    inserted = insert_after_relu(model, lambda relu: SAPActivation(relu, SAP(ratio, mode)))
    if not existing and inserted == 0:
        raise ValueError(
            f"{type(model).__name__} has no nn.ReLU module to put SAP after; SAP is inserted after "
            "nn.ReLU modules (functional F.relu calls are invisible): use nn.ReLU in the model"
        )
    return model


def remove_sap(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_sap` in place (each ``SAPActivation`` becomes its ReLU again).

    Returns the model.
    """
    for name, child in model.named_children():
        if isinstance(child, SAPActivation):
            setattr(model, name, child.activation)
        else:
            remove_sap(child)
    return model


def stochastic_modules(model: nn.Module) -> list[StochasticModule]:
    """All :class:`StochasticModule` layers (SAP, always-on dropout, input noise) in ``model``."""
    return [m for m in model.modules() if isinstance(m, StochasticModule)]


@contextlib.contextmanager
def deterministic(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager that disables every stochastic layer of ``model`` and restores them after.

    Example:
        >>> net = apply_sap(nn.Sequential(nn.Linear(3, 5), nn.ReLU()))
        >>> with deterministic(net):
        ...     a, b = net(torch.ones(1, 3)), net(torch.ones(1, 3))
        >>> torch.equal(a, b)
        True
    """
    layers = stochastic_modules(model)
    saved = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, saved, strict=True):
            layer.enabled = enabled


def mc_average(
    model: nn.Module,
    x: torch.Tensor,
    samples: int,
    *,
    softmax: bool = False,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Monte Carlo average of ``model``'s outputs over ``samples`` stochastic passes.

    The copies of the batch go through the model together (``samples * B`` rows, split into
    chunks of at most ``max_batch`` rows), so every copy gets its own independent SAP draw. Use
    ``softmax=True`` for classifiers (average of probabilities, as in the SAP paper) and the default
    for Q-values. Gradients flow to ``x`` when it requires grad.

    Example:
        >>> net = apply_sap(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
        >>> probs = mc_average(net, torch.randn(4, 3), samples=8, softmax=True)
        >>> probs.shape, bool(torch.allclose(probs.sum(dim=1), torch.ones(4)))
        (torch.Size([4, 2]), True)
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    batch = x.shape[0]
    copies_per_chunk = samples if max_batch is None else max(1, max_batch // max(batch, 1))
    total: torch.Tensor | None = None
    done = 0
    while done < samples:
        n = min(copies_per_chunk, samples - done)
        xs = x.unsqueeze(0).expand(n, *x.shape).reshape(n * batch, *x.shape[1:])
        out = model(xs)
        if softmax:
            out = out.softmax(dim=-1)
        part = out.reshape(n, batch, *out.shape[1:]).sum(dim=0)
        total = part if total is None else total + part
        done += n
    assert total is not None
    return total / samples
