"""Tests of the SAP core (Algorithm 1 of Dhillon et al. 2018) on real tensors and real networks."""

from __future__ import annotations

import copy
import math

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sap_rl.sap import (
    SAP,
    SAPActivation,
    _multiplier_torch,
    apply_sap,
    chain_copies,
    deterministic,
    forward_copies,
    is_random,
    mc_average,
    num_draws,
    remove_sap,
    repeat_rows,
    sap,
    sap_multiplier,
    stochastic_modules,
)

MODES = ("exact", "fast")
# Every statistical check below uses a 5-sigma band: a false failure has probability < 1e-6 per
# element, while a systematic error of a few percent fails.
SIGMAS = 5.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def keep_prob(h: torch.Tensor, r: int) -> torch.Tensor:
    total = h.abs().double().sum()
    p = h.abs().double() / total if total > 0 else torch.zeros_like(h, dtype=torch.float64)
    return 1 - (1 - p) ** r


def standard_error(h: torch.Tensor, q: torch.Tensor, n: int) -> torch.Tensor:
    """Standard error of the mean of n SAP outputs: Var(out_j) = h_j^2 (1/q_j - 1)."""
    var = torch.where(h == 0, 0.0, h.double() ** 2 * (1 / q.clamp(min=1e-300) - 1))
    return var.sqrt() / math.sqrt(n)


def multiplier(x: torch.Tensor, ratio: float, mode: str, backend: str, seed: int) -> torch.Tensor:
    if backend == "cpu":
        return sap_multiplier(x, ratio, mode=mode, generator=gen(seed))
    flat = x.reshape(x.shape[0], -1)
    return _multiplier_torch(flat, num_draws(ratio, flat.shape[1]), mode, gen(seed)).view(x.shape)


# --- unbiasedness and the sampling law -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.1])
def test_monte_carlo_mean_converges_to_input(mode: str, ratio: float, backend: str) -> None:
    h = torch.tensor([0.0, 0.02, -0.3, 1.0, 2.5, -4.0, 7.0, 0.0, 11.0, 0.5])
    n = 40_000
    out = h * multiplier(h.expand(n, -1).contiguous(), ratio, mode, backend, seed=1)
    q = keep_prob(h, num_draws(ratio, h.numel()))
    se = standard_error(h, q, n)
    err = (out.double().mean(0) - h.double()).abs()
    assert bool((err <= SIGMAS * se + 1e-9).all()), (err, se)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("mode", MODES)
def test_keep_frequency_matches_one_minus_one_minus_p_to_the_r(mode: str, backend: str) -> None:
    h = torch.tensor([[0.1, 0.0, 3.0, 0.2, 1.0, 0.05, 6.0, 0.7]])
    r = num_draws(0.5, h.numel())
    n = 40_000
    m = multiplier(h.expand(n, -1).contiguous(), 0.5, mode, backend, seed=2)
    freq = (m > 0).double().mean(0)
    q = keep_prob(h[0], r)
    se = (q * (1 - q) / n).sqrt()
    assert bool(((freq - q).abs() <= SIGMAS * se + 1e-12).all()), (freq, q)
    # The scale of every kept element is exactly 1 / q_j.
    kept = m > 0
    expected = (1 / q).float().expand(n, -1)
    torch.testing.assert_close(m[kept], expected[kept], rtol=1e-5, atol=0)


def test_exact_mode_never_keeps_more_than_r_distinct_elements() -> None:
    x = torch.rand(512, 200) ** 4  # skewed magnitudes: many small activations
    for ratio in (0.01, 0.05, 0.2, 1.0):
        r = num_draws(ratio, 200)
        kept = (sap(x, ratio, generator=gen(3)) != 0).sum(dim=1)
        assert int(kept.max()) <= r
    # With a single draw, exactly one element survives in every non-zero row.
    kept = (sap(x, 1 / 200, generator=gen(4)) != 0).sum(dim=1)
    assert bool((kept == 1).all())


def test_exact_and_fast_modes_differ_in_the_number_of_survivors() -> None:
    x = torch.ones(4000, 10)
    exact = (sap(x, 0.1, mode="exact", generator=gen(5)) != 0).sum(dim=1)
    fast = (sap(x, 0.1, mode="fast", generator=gen(5)) != 0).sum(dim=1)
    assert bool((exact == 1).all())  # r = 1 draw
    assert int(fast.max()) >= 3 and int((fast == 0).sum()) > 0  # independent keeps


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32), min_size=1, max_size=12
    ),
    ratio=st.sampled_from([0.1, 0.5, 1.0, 2.0]),
    mode=st.sampled_from(MODES),
)
def test_property_unbiased_and_well_formed(values: list[float], ratio: float, mode: str) -> None:
    h = torch.tensor(values, dtype=torch.float32)
    n = 20_000
    out = sap(h.expand(n, -1).contiguous(), ratio, mode=mode, generator=gen(6))
    assert torch.isfinite(out).all()
    # Every output is either pruned (0) or the input scaled up by 1/q >= 1 (same sign).
    scaled = out != 0
    assert bool((out[scaled].sign() == h.expand(n, -1)[scaled].sign()).all())
    assert bool((out.abs() + 1e-6 * h.abs().max() >= h.abs() * scaled).all())
    r = num_draws(ratio, h.numel())
    if mode == "exact":
        assert int(scaled.sum(dim=1).max()) <= r
    q = keep_prob(h, r)
    se = standard_error(h, q, n)
    err = (out.double().mean(0) - h.double()).abs()
    # An element kept about n*q << 1 times has a Poisson-like count, not a normal one: allow a
    # few whole keeps (|h| / (n q) each) on top of the normal band (P(>= 5 extra) < 1e-6 there).
    one_keep = torch.where(h == 0, 0.0, h.double().abs() / (n * q.clamp(min=1e-300)))
    assert bool((err <= SIGMAS * se + SIGMAS * one_keep + 1e-6 * (1 + h.abs().max())).all())


# --- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(3, 5),
        torch.tensor([[0.0, 0.0, 4.0, 0.0]]),
        torch.full((2, 64), 1e37),
        torch.tensor([[3e38, 1e-45, 1.0, 0.0]]),
        torch.tensor([[1e-38, 2e-40, 1e-45, 5e-39]]),
        torch.tensor([[1e30, 1e-30, 1.0, 1e-30, 7.0]]),
    ],
    ids=["all-zero", "single-nonzero", "huge", "huge-and-denormal", "tiny", "mixed"],
)
def test_no_nan_or_inf_at_the_float_limits(mode: str, x: torch.Tensor) -> None:
    for ratio in (0.01, 1.0):
        out = sap(x, ratio, mode=mode, generator=gen(7))
        assert out.dtype == x.dtype and out.shape == x.shape
        assert bool(torch.isfinite(out).all())
    assert torch.equal(sap(torch.zeros(3, 5), mode=mode), torch.zeros(3, 5))
    # A single non-zero activation has p = 1: always kept, unscaled.
    single = torch.tensor([[0.0, 0.0, 4.0, 0.0]])
    assert torch.equal(sap(single, mode=mode), single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_and_float64(dtype: torch.dtype, mode: str) -> None:
    x = torch.rand(2000, 50).to(dtype)
    x[:, 0] = 6e-5 if dtype == torch.float16 else 1e-30  # a tiny activation beside large ones
    out = sap(x, 1.0, mode=mode, generator=gen(8))
    assert out.dtype == dtype
    assert bool(torch.isfinite(out).all())
    rel = (out.double().mean() - x.double().mean()).abs() / x.double().mean()
    assert float(rel) < 0.02


def test_gradient_is_upstream_times_mask_times_scale() -> None:
    x = torch.rand(4, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 5, 5)
    for mode in MODES:
        x.grad = None
        (sap(x, 0.7, mode=mode, generator=gen(9)) * w).sum().backward()
        m = sap_multiplier(x, 0.7, mode=mode, generator=gen(9))
        assert x.grad is not None
        torch.testing.assert_close(x.grad, w * m)


# --- randomness: seeds, independence, threads ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_output_and_threads_do_not_matter(mode: str) -> None:
    x = torch.rand(16, 8, 6, 6)
    a = sap(x, 0.5, mode=mode, generator=gen(10))
    b = sap(x, 0.5, mode=mode, generator=gen(10))
    c = sap(x, 0.5, mode=mode, generator=gen(11))
    assert torch.equal(a, b) and not torch.equal(a, c)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = sap(x, 0.5, mode=mode, generator=gen(10))
    finally:
        numba.set_num_threads(threads)
    assert torch.equal(a, single)
    torch.manual_seed(3)
    d = sap(x, 0.5, mode=mode)
    torch.manual_seed(3)
    assert torch.equal(d, sap(x, 0.5, mode=mode))  # generator=None follows torch's global seed


@pytest.mark.parametrize("mode", MODES)
def test_examples_in_a_batch_are_sampled_independently(mode: str) -> None:
    n = 20_000
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(n, -1).contiguous()
    kept = (sap_multiplier(x, 0.5, mode=mode, generator=gen(12)) > 0).double()
    # Pairs of consecutive examples: the joint keep frequency factorises.
    a, b = kept[0::2, 3], kept[1::2, 3]
    joint, product = float((a * b).mean()), float(a.mean() * b.mean())
    assert abs(joint - product) < SIGMAS * math.sqrt(product * (1 - product) / (n / 2))
    # Identical examples do not share a mask.
    assert not torch.equal(kept[0::2], kept[1::2])


# --- the module, insertion and removal -----------------------------------------------------------


def nature_q_network(n_actions: int = 6) -> nn.Module:
    """stable-baselines3's own DQN Q-network (NatureCNN + linear head), untrained."""
    import gymnasium as gym
    from stable_baselines3.common.torch_layers import NatureCNN
    from stable_baselines3.dqn.policies import QNetwork

    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    features = NatureCNN(space, features_dim=512)
    return QNetwork(space, gym.spaces.Discrete(n_actions), features, features_dim=512, net_arch=[])


def test_apply_sap_on_stable_baselines3_q_network() -> None:
    q_net = nature_q_network()
    relus = sum(isinstance(m, nn.ReLU) for m in q_net.modules())
    assert relus == 4
    obs = torch.randint(0, 256, (3, 4, 84, 84)).float()
    with torch.no_grad():
        dense = q_net(obs)
        keys = list(q_net.state_dict())
        apply_sap(q_net, 1.0)
        assert len(stochastic_modules(q_net)) == relus
        assert list(q_net.state_dict()) == keys  # weights load unchanged, no retraining
        noisy = [q_net(obs) for _ in range(2)]
        assert not torch.equal(noisy[0], noisy[1])
        with deterministic(q_net):
            assert torch.equal(q_net(obs), dense)  # bit-identical when disabled
        assert all(m.enabled for m in stochastic_modules(q_net))
        remove_sap(q_net)
        assert not stochastic_modules(q_net)
        assert sum(isinstance(m, nn.ReLU) for m in q_net.modules()) == relus
        assert torch.equal(q_net(obs), dense)


def test_apply_sap_twice_updates_instead_of_stacking() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    apply_sap(net, 1.0)
    apply_sap(net, 0.5, mode="fast")
    layers = stochastic_modules(net)
    assert len(layers) == 2
    assert all(isinstance(m, SAP) and m.ratio == 0.5 and m.mode == "fast" for m in layers)
    assert sum(isinstance(m, SAPActivation) for m in net.modules()) == 2


def test_shared_relu_module_is_wrapped_once_and_sampled_per_call() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.b(self.act(self.a(x))))

    net = apply_sap(Shared(), 1.0)
    assert len(stochastic_modules(net)) == 1
    assert net(torch.rand(2, 4)).shape == (2, 4)


def test_sap_stays_stochastic_in_eval_mode() -> None:
    layer = SAP(1.0).eval()
    x = torch.rand(8, 100)
    assert not torch.equal(layer(x), layer(x))
    layer.enabled = False
    assert layer(x) is x


def test_monte_carlo_average_is_unbiased_at_the_logits() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(5, 6)
    with torch.no_grad():
        dense = net(x)
        apply_sap(net, 1.0)
        avg = mc_average(net, x, samples=4000)
        chunked = mc_average(net, x, samples=4000, max_batch=1000)
    scale = dense.abs().max()
    assert float((avg - dense).abs().max()) < 0.05 * scale
    assert float((chunked - dense).abs().max()) < 0.05 * scale
    probs = mc_average(net, x, samples=10, softmax=True)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))


def test_remove_sap_restores_a_deep_copy_exactly() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2), nn.ReLU())
    original = copy.deepcopy(net)
    remove_sap(apply_sap(net))
    assert repr(net) == repr(original)


# --- input validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.0}, "ratio must be a finite number > 0"),
        ({"ratio": -1.0}, "ratio must be a finite number > 0"),
        ({"ratio": float("nan")}, "ratio must be a finite number > 0"),
        ({"mode": "approx"}, "unknown SAP mode"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sap(torch.rand(2, 3), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        SAP(**kwargs)  # type: ignore[arg-type]


def test_non_floating_and_unbatched_input_raise_value_error() -> None:
    with pytest.raises(ValueError, match="floating-point tensor"):
        sap(torch.ones(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        sap(torch.ones(3))
    with pytest.raises(ValueError, match=r"no nn\.ReLU"):
        apply_sap(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))


def test_sap_leaves_torch_thread_count_alone() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for mode in MODES:
            sap(torch.rand(8, 50), mode=mode)
            assert torch.get_num_threads() == 1
            assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# --- the CPU kernels: fused ReLU, vectorized keep probabilities, overflow rescaling ---------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_fused_relu_sap_matches_relu_then_sap(mode: str, dtype: torch.dtype) -> None:
    x = torch.randn(64, 3, 9, 9, dtype=dtype)
    x[0, 0, 0, :3] = torch.tensor([float("-inf"), -0.0, 0.0], dtype=dtype)
    w = torch.randn(64, 3, 9, 9, dtype=dtype)
    layer = SAPActivation(nn.ReLU(), SAP(0.7, mode, generator=gen(13)))
    fused_in = x.clone().requires_grad_(True)
    fused = layer(fused_in)
    (fused * w).sum().backward()
    plain_in = x.clone().requires_grad_(True)
    plain = sap(torch.relu(plain_in), 0.7, mode=mode, generator=gen(13))
    (plain * w).sum().backward()
    assert fused.dtype == dtype
    assert torch.equal(fused, plain)
    assert fused_in.grad is not None and plain_in.grad is not None
    assert torch.equal(fused_in.grad, plain_in.grad)
    layer.layer.generator = gen(13)
    with torch.no_grad():  # no multiplier is kept for backward: same output
        assert torch.equal(layer.eval()(x), sap(torch.relu(x), 0.7, mode=mode, generator=gen(13)))


@pytest.mark.parametrize("mode", MODES)
def test_scales_are_accurate_on_wide_layers(mode: str) -> None:
    # 4096 elements: every p is below 1/32, so the vectorized series gives the keep probabilities.
    x = torch.rand(8, 4096) ** 3
    m = sap_multiplier(x, 1.0, mode=mode, generator=gen(14)).double()
    q = torch.stack([keep_prob(row, 4096) for row in x])
    kept = m > 0
    assert bool((q[kept] > 0).all())
    torch.testing.assert_close(m[kept] * q[kept], torch.ones_like(m[kept]), rtol=2e-7, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_float64_rows_whose_sum_overflows_are_rescaled(mode: str) -> None:
    x = torch.rand(16, 300, dtype=torch.float64) + 0.5
    huge = x * 2.0**1020  # the row sums overflow float64; p is unchanged
    m = sap_multiplier(x, 1.0, mode=mode, generator=gen(15))
    assert torch.equal(sap_multiplier(huge, 1.0, mode=mode, generator=gen(15)), m)
    out = sap(huge, 1.0, mode=mode, generator=gen(15))
    assert bool(torch.isfinite(out).all()) and bool((out != 0).any())


# ----------------------------------------------------------------------------- forward_copies


def _batch_sizes(net: nn.Module) -> list[tuple[str, int]]:
    """Record (layer name, rows) of every leaf layer's input in ``net``'s next calls."""
    seen: list[tuple[str, int]] = []
    for name, module in net.named_modules():
        if not list(module.children()):
            module.register_forward_pre_hook(
                lambda _m, args, name=name: seen.append((name, args[0].shape[0]))
            )
    return seen


def test_forward_copies_runs_the_deterministic_prefix_once() -> None:
    torch.manual_seed(0)
    net = apply_sap(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3)), 1.0)
    seen = _batch_sizes(net)
    out = forward_copies(net, torch.randn(5, 6), 8)
    assert out.shape == (40, 3)
    rows = dict(seen)
    assert rows["0"] == 5  # the Linear before the first SAP sees one copy of the batch
    assert rows["2"] == 40  # the layers after it see all 8 copies
    assert is_random(net[1]) and not is_random(net[0])
    assert is_random(nn.Dropout(0.5).train()) and not is_random(nn.Dropout(0.5).eval())


def test_forward_copies_equals_the_repeated_input_with_the_same_draws() -> None:
    torch.manual_seed(0)
    net = apply_sap(
        nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)),
        0.5,
    ).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    lazy = forward_copies(net, x, 4)
    (g_lazy,) = torch.autograd.grad(lazy.square().sum(), x)
    torch.manual_seed(1)
    eager = net(repeat_rows(x, 4))
    (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
    torch.testing.assert_close(lazy, eager)
    torch.testing.assert_close(g_lazy, g_eager)
    assert not torch.allclose(lazy[:5], lazy[5:10])  # the copies have their own draws


def test_forward_copies_of_a_deterministic_model_repeats_one_pass() -> None:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = _batch_sizes(net)
    x = torch.randn(5, 6)
    out = forward_copies(net, x, 16)
    assert torch.equal(out, net(x).repeat(16, 1))
    assert {rows for _, rows in seen} == {5}
    assert torch.equal(chain_copies(list(net), x, 1), net(x))
    with pytest.raises(ValueError, match="copies must be >= 1"):
        forward_copies(net, x, 0)


def test_forward_copies_of_a_general_module_repeats_the_input() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = apply_sap(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), 1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)  # a skip connection: not a chain, so no shortcut is safe

    out = forward_copies(Residual(), torch.randn(3, 4), 5)
    assert out.shape == (15, 4)
