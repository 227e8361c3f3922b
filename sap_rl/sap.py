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
    "chain_copies",
    "deterministic",
    "forward_copies",
    "insert_after_relu",
    "is_random",
    "mc_average",
    "num_draws",
    "remove_sap",
    "repeat_rows",
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
    _validate(x, ratio, mode)
    if x.device.type == "cpu":
        # One numba pass writes both the output and the multiplier the backward pass needs.
        out: torch.Tensor = _SAPFunction.apply(x, ratio, mode, generator, False)
        return out
    mult = sap_multiplier(x, ratio, mode=mode, generator=generator)
    return _times(x, mult)


def _times(x: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """``x * mult``; float16 / bfloat16 are scaled in float32, so a large 1/q cannot overflow."""
    if x.dtype in (torch.float32, torch.float64):
        return x * mult
    return (x.float() * mult).to(x.dtype)


class _SAPFunction(torch.autograd.Function):
    """``act(x) * m`` computed by the CPU kernels together with ``m``; backward: ``grad * m``.

    ``act`` is the identity, or ReLU when ``relu`` is true (ReLU + SAP fused: ``m`` is 0 wherever
    ``relu(x)`` is, so ``grad * m`` is also the gradient through the ReLU).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        ratio: float,
        mode: str,
        generator: torch.Generator | None,
        relu: bool,
    ) -> torch.Tensor:
        flat = x.detach().reshape(x.shape[0], -1)
        need_grad = bool(ctx.needs_input_grad[0])
        r = num_draws(ratio, flat.shape[1])
        out, mult = _sap_cpu(flat, r, mode, generator, need_grad, relu=relu)
        if need_grad:
            ctx.save_for_backward(mult)
        return out.view(x.shape).to(x.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None]:
        (mult,) = ctx.saved_tensors
        return _times(grad, mult.view(grad.shape)), None, None, None, None


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
    return _sap_cpu(flat, r, mode, generator, need_mult=True, need_out=False)[1]


def _sap_cpu(
    flat: torch.Tensor,
    r: int,
    mode: str,
    generator: torch.Generator | None,
    need_mult: bool,
    need_out: bool = True,
    relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat * m, m)`` for a CPU batch of rows, from one numba kernel call.

    With ``relu``, SAP acts on ``relu(flat)`` and the first item is ``relu(flat) * m``.

    The work dtype is float64 for float64 input and float32 otherwise (float16 / bfloat16 rows are
    converted first, so the product ``flat * m`` is formed in float32). An output that is not asked
    for is returned as an empty tensor.
    """
    from sap_rl import _sap_kernels

    work_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    h = flat.to(work_dtype).contiguous()
    m_cap, out_cap = _caps(flat.dtype, work_dtype)
    seed = _seed_from(generator)
    dummy = torch.empty(1, 1, dtype=work_dtype)
    exact = mode == "exact"
    mult = torch.empty_like(h) if need_mult or exact else dummy
    out = torch.empty_like(h) if need_out else dummy
    threads = _match_torch_threads()
    try:
        if exact:
            _sap_kernels.exact_fill(
                h.numpy(), r, seed, m_cap, out_cap, mult.numpy(), out.numpy(), need_out, relu
            )
        else:
            _sap_kernels.fast_fill(
                h.numpy(),
                r,
                seed,
                m_cap,
                out_cap,
                mult.numpy(),
                out.numpy(),
                need_mult,
                need_out,
                relu,
            )
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return out, mult


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

    Attributes:
        enabled: whether the layer is random (else the identity or its plain activation).
        generator: the layer's own source of randomness (``None``: torch's global generator).
    """

    generator: torch.Generator | None

    def __init__(self, *, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.generator = None


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
    """A ReLU followed by :class:`SAP`; what :func:`apply_sap` puts in place of each ``nn.ReLU``.

    On the CPU an enabled layer after a plain (not in-place) ``nn.ReLU`` runs both in one kernel
    pass: same output, same gradient (``grad * mask * scale``, which is 0 wherever the ReLU is),
    without materialising the ReLU's output.
    """

    activation: nn.Module
    layer: SAP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer, activation = self.layer, self.activation
        if (
            layer.enabled
            and type(activation) is nn.ReLU
            and not activation.inplace
            and x.device.type == "cpu"
            and not activation._forward_hooks
            and not activation._forward_pre_hooks
        ):
            _validate(x, layer.ratio, layer.mode)
            out: torch.Tensor = _SAPFunction.apply(
                x, layer.ratio, layer.mode, layer.generator, True
            )
            return out
        return super().forward(x)


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
        out = forward_copies(model, x, n)
        if softmax:
            out = out.softmax(dim=-1)
        part = out.reshape(n, batch, *out.shape[1:]).sum(dim=0)
        total = part if total is None else total + part
        done += n
    assert total is not None
    return total / samples


def repeat_rows(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of the batch stacked along the batch dimension (copy-major rows).

    Example:
        >>> repeat_rows(torch.tensor([[1.0], [2.0]]), 2).flatten().tolist()
        [1.0, 2.0, 1.0, 2.0]
    """
    if copies == 1:
        return x
    return x.unsqueeze(0).expand(copies, *x.shape).reshape(copies * x.shape[0], *x.shape[1:])


def is_random(module: nn.Module) -> bool:
    """Whether ``module`` (or a layer inside it) draws random numbers in its forward pass now.

    True for an enabled :class:`StochasticModule` and for ``nn.Dropout`` in training mode.

    Example:
        >>> is_random(SAP()), is_random(nn.ReLU()), is_random(nn.Dropout().eval())
        (True, False, False)
    """
    return any(
        (isinstance(m, StochasticModule) and m.enabled)
        or (isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0)
        for m in module.modules()
    )


def chain_copies(layers: list[nn.Module], x: torch.Tensor, copies: int) -> torch.Tensor:
    """Apply ``layers`` in turn to ``copies`` copies of ``x``, copying only where randomness starts.

    The layers before the first random one (:func:`is_random`) see one copy of the batch; their
    output is then repeated ``copies`` times (copy-major), so each copy gets its own draws in the
    random layers, as if the input had been repeated. Layers must act on each row independently
    (true in eval mode for convolutions, linear layers, activations and batch norm).

    Example:
        >>> net = apply_sap(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
        >>> chain_copies(list(net), torch.ones(4, 3), 8).shape
        torch.Size([32, 2])
    """
    h = x
    for layer in layers:
        if copies > 1 and is_random(layer):
            h = repeat_rows(h, copies)
            copies = 1
        h = layer(h)
    return repeat_rows(h, copies)


def forward_copies(model: nn.Module, x: torch.Tensor, copies: int) -> torch.Tensor:
    """``model`` on ``copies`` copies of the batch ``x`` (copy-major rows), each with its own draws.

    Equal in distribution to ``model(repeat_rows(x, copies))``, which is what runs for a general
    model. For an ``nn.Sequential``, and for a model with a ``forward_copies(x, copies)`` method
    (:class:`sap_rl.rl.agent.QNetwork` has one), the deterministic layers before the first random
    one run once on ``x`` instead of ``copies`` times: an EOT gradient over 16 SAP draws of a
    Nature-CNN Q-network then skips 15 of its 16 first-layer convolutions, forward and backward.
    Gradients flow to ``x`` through the copies (summed).

    Example:
        >>> net = apply_sap(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
        >>> forward_copies(net, torch.ones(4, 3), 8).shape
        torch.Size([32, 2])
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    custom = getattr(model, "forward_copies", None)
    if callable(custom):
        out: torch.Tensor = custom(x, copies)
        return out
    if isinstance(model, nn.Sequential):
        return chain_copies(list(model), x, copies)
    return model(repeat_rows(x, copies))
