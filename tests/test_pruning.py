"""The domain-free HARP core: masks, straight-through gradients, rates, hardware loss, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.pruning import (
    OBJECTIVES,
    HarpConfig,
    LayerCost,
    MaskedLayer,
    adversarial_loss,
    check_masks,
    fit_counts,
    hardware_loss,
    harp_prune,
    initial_rates,
    kept_count,
    layer_costs,
    mask_tensors,
    masked_layers,
    prunable_layers,
    split_masks,
    unwrap_model,
    weight_of,
    wrap_model,
)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
    )  # fmt: skip


def toy_data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g) * 255
    y = (x[:, 0, :2].mean(dim=(1, 2)) // 86).long().clamp(max=2)
    return x, y


@pytest.mark.parametrize("rate", [0.013, 0.1, 0.37, 0.5, 0.999])
def test_mask_keeps_exactly_the_target_count(rate: float) -> None:
    net = wrap_model(small_net(), {"0": rate, "4": rate, "6": rate}, k_min=0.01)
    for layer in masked_layers(net).values():
        expected = kept_count(float(layer.rate().detach()), layer.numel)
        assert int(layer.mask().sum()) == expected
        assert abs(expected - rate * layer.numel) <= 0.5 + 1e-6 or expected == 1


def test_mask_keeps_the_largest_scores() -> None:
    layer = MaskedLayer(nn.Linear(5, 2), 0.5, 0.1)
    with torch.no_grad():
        layer.scores.copy_(torch.arange(10.0).view(2, 5))
    assert layer.mask().flatten().tolist() == [0.0] * 5 + [1.0] * 5


def test_gradient_reaches_scores_and_rate_straight_through() -> None:
    layer = MaskedLayer(nn.Linear(6, 3), 0.5, 0.1)
    x = torch.randn(4, 6)
    layer(x).pow(2).sum().backward()
    assert layer.scores.grad is not None and layer.rate_score.grad is not None
    # pruned weights get a gradient too (straight through), not only the kept ones
    pruned = layer.mask() == 0
    assert bool((layer.scores.grad[pruned] != 0).any())
    assert float(layer.rate_score.grad) != 0.0
    assert layer.layer.weight.grad is None  # weights are frozen while pruning


def test_hardware_loss_is_zero_at_or_below_target() -> None:
    for current in (0.0, 50.0, 99.9, 100.0):
        assert hardware_loss(torch.tensor(current), 100.0, 0.5).item() == 0.0
    assert hardware_loss(torch.tensor(200.0), 100.0, 0.5).item() == pytest.approx(0.5)


def test_learned_rates_stay_inside_k_min_and_one() -> None:
    layer = MaskedLayer(nn.Linear(10, 10), 0.5, 0.2)
    for push in (1e4, -1e4):
        with torch.no_grad():
            layer.rate_score.fill_(push)
        assert 0.2 <= float(layer.rate().detach()) <= 1.0
    optimizer = torch.optim.SGD([layer.rate_score], lr=100.0)
    for sign in (1.0, -1.0):
        for _ in range(20):
            optimizer.zero_grad()
            (sign * layer.rate()).backward()
            optimizer.step()
            assert 0.2 <= float(layer.rate().detach()) <= 1.0


@pytest.mark.parametrize("strategy", ["uniform", "lamp", "erk"])
def test_initial_rates_keep_the_density(strategy: str) -> None:
    net = small_net()
    names = list(prunable_layers(net))
    costs = layer_costs(net, torch.zeros(1, 1, 4, 4), names)
    weights = {n: weight_of(net.get_submodule(n)) for n in names}
    rates = initial_rates(strategy, costs, density=0.2, weights=weights)
    kept = sum(rates[n] * costs[n].weights for n in names)
    assert kept == pytest.approx(0.2 * sum(c.weights for c in costs.values()), rel=0.02)
    assert all(0.0 < r <= 1.0 for r in rates.values())


def test_layer_costs_count_conv_positions() -> None:
    costs = layer_costs(small_net(), torch.zeros(2, 1, 4, 4), ["0", "4"])
    assert costs["0"] == LayerCost(36, (4, 1, 3, 3), 16)
    assert costs["4"].positions == 1


def test_fit_counts_meets_target_on_flops() -> None:
    costs = {"a": LayerCost(100, (10, 10), 16), "b": LayerCost(100, (10, 10), 1)}
    counts = fit_counts({"a": 0.9, "b": 0.9}, costs, target=500.0, hardware="flops", k_min=0.01)
    assert counts["a"] * 16 + counts["b"] <= 500


def test_no_prunable_layers_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no prunable layers"):
        prunable_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(UserError, match="no prunable layers"):
        prunable_layers(small_net(), exclude=["*"])


def test_unwrap_writes_zeros_and_returns_masks() -> None:
    net = small_net()
    wrap_model(net, {"4": 0.25}, k_min=0.05)
    x = torch.rand(3, 1, 4, 4) * 255
    before = net.eval()(x)
    masks = unwrap_model(net)
    assert isinstance(net[4], nn.Linear) and list(masks) == ["4.weight"]
    assert int((net[4].weight != 0).sum()) == int(masks["4.weight"].sum()) == 256
    torch.testing.assert_close(net(x), before)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_are_finite_and_differentiable(objective: str) -> None:
    net = small_net()
    x, y = toy_data(8)
    loss, logits = adversarial_loss(objective, net, x, y, eps=8, steps=2, step_size=4,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.isfinite(loss) and logits.shape == (8, 3)
    loss.backward()
    assert net[0].weight.grad is not None


def test_pgd_objective_is_cross_entropy_on_pgd_examples() -> None:
    from sap_rl.attacks import pgd

    net = small_net().eval()
    x, y = toy_data(8)
    loss, _ = adversarial_loss("pgd", net, x, y, eps=4, steps=3, step_size=2,
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    x_adv = pgd(net, x, 4, steps=3, step_size=2, target=y,
                generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert loss.item() == pytest.approx(F.cross_entropy(net(x_adv), y).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("hardware", "strategy", "optimizer"),
    [("params", "lamp", "sgd"), ("flops", "erk", "sgd"), ("params", "uniform", "adam")],
)
def test_harp_reaches_sparsity_and_save_load_gives_same_outputs(
    hardware: str, strategy: str, optimizer: str, tmp_path: Path
) -> None:
    from sap_rl.io import load_tensors, save_tensors

    x, y = toy_data()
    net = small_net()
    cfg = from_dict(HarpConfig, {"sparsity": 0.8, "prune_epochs": 2, "finetune_epochs": 1,
                                 "steps": 1, "eps": 4, "step_size": 4, "hardware": hardware,
                                 "strategy": strategy, "optimizer": optimizer})  # fmt: skip
    result = harp_prune(net, lambda e: [(x[:48], y[:48]), (x[48:], y[48:])], cfg)
    stats = result.stats
    if hardware == "params":
        assert stats.sparsity >= 0.8 - 1e-9
    else:
        assert stats.flops <= 0.2 * stats.dense_flops + 1e-9
    assert stats.kept_weights == sum(int(m.sum()) for m in result.masks.values())
    path = tmp_path / "model.safetensors"
    save_tensors(path, {**result.model.state_dict(), **mask_tensors(result.masks)})
    weights, masks = split_masks(load_tensors(path))
    check_masks(weights, masks, str(path))
    fresh = small_net()
    fresh.load_state_dict(weights)
    fresh.eval()
    torch.testing.assert_close(fresh(x), result.model(x))
    # the original model is untouched
    assert not any(isinstance(m, MaskedLayer) for m in net.modules())


def test_adam_moves_the_scores_and_then_the_kept_weights() -> None:
    x, y = toy_data()
    net = small_net()
    cfg = HarpConfig(sparsity=0.5, prune_epochs=1, finetune_epochs=1, steps=1, eps=0.0,
                     step_size=0.0, optimizer="adam", lr=1e-2, finetune_lr=1e-2)  # fmt: skip
    result = harp_prune(net, lambda e: [(x, y)], cfg)
    before = {n: p for n, p in net.named_parameters() if p.ndim > 1}
    for name, param in result.model.named_parameters():
        if name in before:
            kept = result.masks[name]
            assert not torch.equal(param[kept], before[name][kept])  # fine-tuned
            assert (param[~kept] == 0).all()


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="optimizer must be sgd or adam"):
        HarpConfig(sparsity=0.5, optimizer="rmsprop")  # type: ignore[arg-type]


def test_check_masks_refuses_nonzero_pruned_weights() -> None:
    weights = {"w": torch.ones(2, 2)}
    with pytest.raises(UserError, match="not zero"):
        check_masks(weights, {"w": torch.eye(2).bool()}, "f")
    with pytest.raises(UserError, match="not a weight"):
        check_masks(weights, {"v": torch.eye(2).bool()}, "f")


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_open_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        HarpConfig(sparsity=bad)


def test_core_imports_no_domain_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sap_rl.pruning\n"
        "bad = [m for m in sys.modules if m.startswith(('sap_rl.rl', 'sap_rl.vision'))]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
