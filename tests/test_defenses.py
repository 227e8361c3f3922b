"""Tests of the named inference-time defenses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sap_rl.defenses import (
    AlwaysDropout,
    DefenseSpec,
    InputNoise,
    apply_defense,
    parse_defense,
    strip_defenses,
)
from sap_rl.errors import UserError
from sap_rl.sap import SAP, apply_sap, deterministic, stochastic_modules


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))  # fmt: skip


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("dense", DefenseSpec("dense", "dense")),
        ("SAP-100", DefenseSpec("sap-100", "sap", 100.0)),
        ("sap-50-fast", DefenseSpec("sap-50-fast", "sap", 50.0, fast=True)),
        ("sap-12.5", DefenseSpec("sap-12.5", "sap", 12.5)),
        ("dropout-0.1", DefenseSpec("dropout-0.1", "dropout", 0.1)),
        ("noise-4", DefenseSpec("noise-4", "noise", 4.0)),
    ],
)
def test_parse_defense(name: str, spec: DefenseSpec) -> None:
    assert parse_defense(name) == spec


@pytest.mark.parametrize(
    "name", ["sap", "sap-0", "dropout-1", "dropout-1.5", "noise", "jpeg", "sap-x"]
)
def test_unknown_or_out_of_range_defense(name: str) -> None:
    with pytest.raises(UserError, match="defense"):
        parse_defense(name)


def test_defenses_copy_the_model_and_leave_the_original_untouched() -> None:
    net = small_net()
    x = torch.rand(3, 1, 4, 4) * 255
    before = net(x)
    for name in ("dense", "sap-100", "sap-50-fast", "dropout-0.2", "noise-3"):
        defended = apply_defense(net, name)
        assert defended is not net
        assert defended(x).shape == before.shape
    assert not stochastic_modules(net)
    assert torch.equal(net(x), before)
    assert torch.equal(apply_defense(net, "dense")(x), before)


def test_sap_defense_inserts_sap_after_every_relu() -> None:
    layers = stochastic_modules(apply_defense(small_net(), "sap-50-fast"))
    assert len(layers) == 2
    assert all(isinstance(m, SAP) and m.ratio == 0.5 and m.mode == "fast" for m in layers)


def test_dropout_is_active_in_eval_mode_and_unbiased() -> None:
    defended = apply_defense(small_net(), "dropout-0.3").eval()
    assert len(stochastic_modules(defended)) == 2
    layer = AlwaysDropout(0.3, generator=torch.Generator().manual_seed(0)).eval()
    out = layer(torch.ones(200_000, 1))
    assert abs(float((out == 0).float().mean()) - 0.3) < 0.005
    assert abs(float(out.mean()) - 1.0) < 0.01


def test_input_noise_is_clipped_to_pixel_range_and_has_the_right_sigma() -> None:
    layer = InputNoise(8.0, generator=torch.Generator().manual_seed(0))
    out = layer(torch.full((100_000,), 128.0))
    assert abs(float(out.std()) - 8.0) < 0.1
    edge = layer(torch.tensor([0.0, 255.0]).repeat(1000))
    assert float(edge.min()) >= 0.0 and float(edge.max()) <= 255.0


def test_deterministic_switches_every_stochastic_defense_off() -> None:
    x = torch.rand(4, 1, 4, 4) * 255
    for name in ("sap-100", "dropout-0.5", "noise-10"):
        defended = apply_defense(small_net(), name)
        with deterministic(defended):
            assert torch.equal(defended(x), small_net()(x))
        assert parse_defense(name).stochastic
    assert not parse_defense("dense").stochastic
    assert not parse_defense("noise-0").stochastic


@pytest.mark.parametrize("first", ["sap-100", "sap-50-fast", "dropout-0.5", "noise-4"])
@pytest.mark.parametrize("second", ["dense", "sap-50", "dropout-0.1", "noise-2"])
def test_a_defense_on_a_defended_model_replaces_the_first(first: str, second: str) -> None:
    """apply_defense builds on the dense network, whatever defense the model already carries."""
    x = torch.rand(4, 1, 4, 4) * 255
    dense_out = small_net()(x)
    defended = apply_defense(apply_defense(small_net(), first), second)
    expected = apply_defense(small_net(), second)
    assert [type(m) for m in defended.modules()] == [type(m) for m in expected.modules()]
    with deterministic(defended):
        assert torch.equal(defended(x), dense_out)


def test_apply_defense_after_apply_sap_in_place() -> None:
    """The README's sequence: apply_sap on the model, then a dropout copy of the dense model."""
    net = small_net()
    apply_sap(net, ratio=1.0)
    dropout_net = apply_defense(net, "dropout-0.1")
    layers = stochastic_modules(dropout_net)
    assert len(layers) == 2 and all(isinstance(m, AlwaysDropout) for m in layers)
    assert all(isinstance(m, SAP) for m in stochastic_modules(net))  # the original keeps SAP
    assert isinstance(strip_defenses(net)[2], nn.ReLU)
