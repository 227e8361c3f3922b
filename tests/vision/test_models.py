"""ResNet-20 / digits CNN architecture, SAP on ResNet-20, and the model folder format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.sap import apply_sap, deterministic, stochastic_modules
from sap_rl.vision.models import (
    DigitsCNN,
    ResidualBlock,
    ResNet18,
    ResNet20,
    build_model,
    count_parameters,
    load_model,
    save_model,
)


def test_resnet20_parameter_count_and_shapes() -> None:
    net = ResNet20(num_classes=10)
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (option A shortcuts add none)
    assert count_parameters(net) == 269_722
    assert net(torch.rand(3, 3, 32, 32) * 255).shape == (3, 10)
    assert ResNet20(num_classes=100)(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 + 3 stages x 3 blocks x 2; plus the linear layer = 20 layers
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 19
    assert [m.out_channels for m in convs][1::6] == [16, 32, 64]


def test_resnet20_stage_shapes() -> None:
    net = ResNet20().eval()
    x = net.relu(net.bn1(net.conv1(net.normalize(torch.zeros(2, 3, 32, 32)))))
    shapes = []
    for stage in (net.layer1, net.layer2, net.layer3):
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_option_a_shortcut_zero_pads_and_subsamples() -> None:
    block = ResidualBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    short = block.shortcut(x)
    assert short.shape == (2, 32, 4, 4)
    assert torch.equal(short[:, 8:24], x[:, :, ::2, ::2])
    assert short[:, :8].abs().sum() == 0 and short[:, 24:].abs().sum() == 0
    assert count_parameters(ResidualBlock(16, 16)) == 2 * (16 * 16 * 9 + 2 * 16)


def test_block_shortcuts_keep_the_saved_weight_names() -> None:
    # ResNet-20's option A shortcut has no weights; ResNet-18's option B is conv + BN at .0/.1
    assert not any("shortcut" in k for k in ResNet20().state_dict())
    keys = {k for k in ResNet18().state_dict() if "shortcut" in k}
    assert "layer2.0.shortcut.0.weight" in keys and "layer2.0.shortcut.1.running_mean" in keys
    assert not any(k.startswith("layer1.") for k in keys)
    with pytest.raises(ValueError, match="shortcut must be"):
        ResidualBlock(16, 32, shortcut="zeros")


def test_normalization_is_inside_the_model() -> None:
    net = ResNet20()
    out = net.normalize(torch.full((1, 3, 1, 1), 125.307))
    assert abs(float(out[0, 0])) < 1e-4


def test_digits_cnn_shapes() -> None:
    net = DigitsCNN()
    assert net(torch.rand(5, 1, 8, 8) * 255).shape == (5, 10)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 3
    assert count_parameters(net) < 50_000


def test_unknown_architecture() -> None:
    with pytest.raises(UserError, match="resnet20"):
        build_model("vgg", num_classes=10, input_shape=(3, 32, 32))


def _trained_bn(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give batch norm non-trivial running statistics, then switch to eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net.eval()


def test_sap_on_resnet20_is_unbiased_at_the_logits() -> None:
    """Monte Carlo check: with SAP-100 on the last ReLU (followed by average pooling and the linear
    layer, both linear), E[logits] equals the dense logits, in both sampling modes.

    Earlier SAP layers are unbiased for *their* outputs, but the ReLUs and convolutions after them
    make the logits' expectation differ from the dense logits, so the whole-network check would be
    false; this test isolates the layer whose unbiasedness carries through to the logits.
    """
    torch.manual_seed(0)
    net = _trained_bn(ResNet20(), torch.rand(32, 3, 8, 8) * 255)
    x = torch.rand(1, 3, 8, 8) * 255  # any size works with global pooling; small = fast
    with torch.no_grad():
        dense = net(x)
    for mode in ("exact", "fast"):
        apply_sap(net, 1.0, mode)
        layers = stochastic_modules(net)
        assert len(layers) == 19
        for layer in layers[:-1]:
            layer.enabled = False
        samples = 1500
        with torch.no_grad():
            outs = net(x.expand(samples, -1, -1, -1))
        mean, sem = outs.mean(dim=0), outs.std(dim=0) / samples**0.5
        assert outs.std(dim=0).min() > 0  # SAP is active
        z = (mean - dense[0]) / sem
        assert z.abs().max() < 5.0, (mode, z)
        with deterministic(net):
            assert torch.allclose(net(x), dense, atol=1e-5)


def test_sap_keeps_resnet20_parameters() -> None:
    net = ResNet20()
    keys = set(net.state_dict())
    apply_sap(net)
    assert set(net.state_dict()) == keys


def _card(**extra: object) -> dict[str, object]:
    card: dict[str, object] = {
        "name": "m",
        "architecture": "digits_cnn",
        "dataset": "digits",
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "classes": [str(i) for i in range(10)],
        "adversarial": "none",
        "epochs": 1,
        "clean_accuracy": 0.5,
        "test_examples": 540,
        "sha256": "",
        "sap_rl_version": "test",
    }
    card.update(extra)
    return card


def test_save_load_round_trip(tmp_path: Path) -> None:
    net = DigitsCNN()
    card = save_model(net, tmp_path, _card())
    assert len(card.sha256) == 64
    loaded, card2 = load_model(tmp_path)
    assert card2 == card and not loaded.training
    x = torch.rand(2, 1, 8, 8) * 255
    assert torch.equal(loaded(x), net.eval()(x))
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x02"  # not a pickle
    loaded2, _ = load_model(tmp_path / "card.json")
    assert isinstance(loaded2, DigitsCNN)


def test_load_rejects_tampering(tmp_path: Path) -> None:
    save_model(DigitsCNN(), tmp_path, _card())
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        load_model(tmp_path)


def test_load_rejects_bad_cards(tmp_path: Path) -> None:
    save_model(DigitsCNN(), tmp_path, _card())
    card_path = tmp_path / "card.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "architecure": "x"}))
    with pytest.raises(UserError, match="architecure"):
        load_model(tmp_path)
    card_path.write_text(json.dumps({**card, "architecture": "resnet20"}))
    with pytest.raises(UserError, match="do not fit"):
        load_model(tmp_path)
    card_path.write_text(json.dumps({**card, "format": "other/9"}))
    with pytest.raises(UserError, match="format"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="not a model folder"):
        load_model(tmp_path / "missing")
