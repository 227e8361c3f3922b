"""Training: configs, schedules, adversarial batches (paper, Kurakin et al., PGD-AT, TRADES,
MART), resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sap_rl.config import from_dict, load_config, to_dict
from sap_rl.errors import UserError
from sap_rl.io import load_tensors
from sap_rl.vision.adversarial import (
    kurakin_loss,
    mixed_loss,
    paper_batch,
    truncated_normal_eps,
)
from sap_rl.vision.models import load_model
from sap_rl.vision.train import train
from sap_rl.vision.train_config import PRESETS, TrainConfig, default_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_committed_configs_match_presets(dataset: str) -> None:
    from_yaml = load_config(TrainConfig, CONFIGS / f"{dataset}.yaml")
    assert to_dict(from_yaml) == to_dict(default_config(dataset))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_parses(path: Path) -> None:
    from sap_rl.vision.evaluate import VisionEvalConfig
    from sap_rl.vision.prune import PruneConfig

    kind = path.name.split("-")[0]
    cls: type[Any] = {"eval": VisionEvalConfig, "prune": PruneConfig}.get(kind, TrainConfig)
    config = load_config(cls, path)
    if isinstance(config, VisionEvalConfig):
        from sap_rl.attacks import parse_attack
        from sap_rl.defenses import parse_defense

        assert all(parse_attack(a) for a in config.attacks)
        assert all(parse_defense(d) for d in config.defenses)


def test_cifar10_config_is_the_sap_paper_recipe() -> None:
    cfg = default_config("cifar10")
    assert (cfg.architecture, cfg.batch_size, cfg.momentum, cfg.weight_decay) == (
        "resnet20", 512, 0.9, 1e-4,
    )  # fmt: skip
    assert [(s.epochs, s.lr) for s in cfg.schedule] == [(100, 0.5), (30, 0.05), (20, 0.005)]
    assert [cfg.lr_at(e) for e in (0, 99, 100, 129, 130, 149)] == [
        0.5, 0.5, 0.05, 0.05, 0.005, 0.005,
    ]  # fmt: skip
    adv = cfg.adversarial
    assert (adv.fraction, adv.eps, adv.loss_weight, adv.eps_sigma, adv.eps_max, adv.attack) == (
        0.2, 2.0, 0.3, 8.0, 16.0, "fgsm-ll",
    )  # fmt: skip


def test_config_errors_are_one_line() -> None:
    with pytest.raises(UserError, match="schedul"):
        from_dict(TrainConfig, {**PRESETS["digits"], "schedul": []})
    with pytest.raises(UserError, match="per_batch"):
        from_dict(TrainConfig, {**PRESETS["digits"], "adversarial": {"per_batch": 1000}})
    with pytest.raises(UserError, match="mode"):
        from_dict(TrainConfig, {**PRESETS["digits"], "adversarial": {"mode": "madry"}})


def test_truncated_normal_eps_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    eps = truncated_normal_eps(200_000, sigma=8.0, high=16.0, generator=g).double()
    assert eps.min() >= 0 and eps.max() <= 16
    # N(0, 8) restricted to [0, 16] = half-normal truncated at 2 sigma
    a = 2.0
    phi, big_phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(a / 2**0.5))
    mean = 8.0 * (1 / math.sqrt(2 * math.pi) - phi) / (big_phi - 0.5)
    assert abs(eps.mean().item() - mean) < 0.05
    # density decreasing: more mass in [0, 4] than in [12, 16]
    assert (eps < 4).float().mean() > 2 * (eps > 12).float().mean()


def test_mixed_loss_is_kurakins_formula() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(10, 4), torch.randint(0, 4, (10,))
    k, lam = 3, 0.3
    losses = nn.functional.cross_entropy(logits, y, reduction="none")
    expected = (losses[k:].sum() + lam * losses[:k].sum()) / ((10 - k) + lam * k)
    assert torch.allclose(mixed_loss(logits, y, k, lam), expected)
    assert torch.allclose(mixed_loss(logits, y, 0, lam), losses.mean())


class _Recorder(nn.Module):
    """A linear classifier that remembers the batches it saw in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.net(x)


def test_kurakin_replaces_k_examples_with_per_example_eps() -> None:
    torch.manual_seed(0)
    model = _Recorder().train()
    x = torch.rand(8, 1, 2, 2) * 200 + 20
    y = torch.randint(0, 3, (8,))
    g = torch.Generator().manual_seed(1)
    loss, logits = kurakin_loss(model, x, y, per_batch=5, generator=g)
    assert model.training and logits.shape == (8, 3) and loss.requires_grad
    batch = model.seen[-1]
    delta = (batch - x).abs().flatten(1).amax(dim=1)
    assert torch.equal(batch[5:], x[5:])
    eps = truncated_normal_eps(5, sigma=8.0, high=16.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(delta[:5], eps, atol=1e-4)  # one eps per example, FGSM uses all of it
    # step l.l. moves towards the least-likely class: its logit goes up
    with torch.no_grad():
        clean_logits = model.net(x[:5])
        ll = clean_logits.argmin(dim=1)
        gain = model.net(batch[:5]).gather(1, ll[:, None]) - clean_logits.gather(1, ll[:, None])
    assert (gain > 0).all()


def test_paper_batch_uses_the_given_previous_model() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 2)
    previous = nn.Sequential(nn.Flatten(), linear)
    x, y = torch.full((10, 1, 2, 2), 100.0), torch.zeros(10, dtype=torch.long)
    mixed, k = paper_batch(previous, x, y, fraction=0.2, eps=2.0)
    assert k == 2 and torch.equal(mixed[2:], x[2:])
    w = linear.weight
    direction = (w[0] - w[1]).sign().neg()  # moving away from class 0
    assert torch.allclose(mixed[:2].flatten(1), (x[:2].flatten(1) + 2.0 * direction))


def _tiny(epochs: int, **adv: object) -> TrainConfig:
    data = {**PRESETS["digits"], "schedule": [{"epochs": epochs, "lr": 0.05}]}
    if adv:
        data["adversarial"] = adv
    return from_dict(TrainConfig, data)


def test_train_writes_a_model_folder(digits_model_dir: Path) -> None:
    for name in ("model.safetensors", "card.json", "config.yaml", "history.csv"):
        assert (digits_model_dir / name).is_file()
    _, card = load_model(digits_model_dir)
    assert card.epochs == 3 and card.clean_accuracy > 0.5
    assert card.training["schedule"] == [{"epochs": 3, "lr": 0.05}]
    assert len((digits_model_dir / "history.csv").read_text().splitlines()) == 4
    assert not list((digits_model_dir / "checkpoints").glob("epoch-0001*"))  # old ones pruned


@pytest.fixture
def small_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train on the first 320 training images only (keeps the resume tests fast)."""
    import dataclasses

    from sap_rl.vision import train as train_module
    from sap_rl.vision.data import load_digits

    full = load_digits()
    small = dataclasses.replace(full, x_train=full.x_train[:320], y_train=full.y_train[:320])
    monkeypatch.setattr(train_module, "load_dataset", lambda name, root=None: small)


@pytest.mark.usefixtures("small_digits")
def test_resume_gives_the_same_model(tmp_path: Path) -> None:
    straight = train(_tiny(2, mode="kurakin"), tmp_path / "a", quiet=True)
    partial = train(_tiny(2, mode="kurakin"), tmp_path / "b", quiet=True, max_epochs=1)
    assert partial.epochs == 1 and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(_tiny(2, mode="kurakin"), tmp_path / "b", quiet=True)
    assert resumed.epochs == 2
    a, b = (load_tensors(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert straight.clean_accuracy == resumed.clean_accuracy


@pytest.mark.usefixtures("small_digits")
def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    train(_tiny(2), tmp_path, quiet=True, max_epochs=1)
    with pytest.raises(UserError, match="different config"):
        train(_tiny(3), tmp_path, quiet=True)
    card = train(_tiny(3), tmp_path, quiet=True, resume=False)
    assert card.epochs == 3


@pytest.mark.usefixtures("small_digits")
def test_paper_mode_trains(tmp_path: Path) -> None:
    card = train(_tiny(1, mode="paper"), tmp_path, quiet=True)
    assert card.adversarial == "paper" and card.training["adversarial"]["mode"] == "paper"


@pytest.mark.usefixtures("small_digits")
@pytest.mark.parametrize("mode", ["pgd", "trades", "mart"])
def test_robust_modes_train(tmp_path: Path, mode: str) -> None:
    card = train(_tiny(1, mode=mode, pgd_steps=2, pgd_step_size=4.0), tmp_path, quiet=True)
    assert card.adversarial == mode and card.training["adversarial"]["pgd_eps"] == 8.0
    assert 0.0 <= card.clean_accuracy <= 1.0


def test_robust_mode_settings_are_validated() -> None:
    with pytest.raises(UserError, match="pgd_steps"):
        _tiny(1, mode="pgd", pgd_steps=0)
    with pytest.raises(UserError, match="beta"):
        _tiny(1, mode="trades", beta=-1.0)
