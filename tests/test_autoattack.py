"""Tests of the AutoAttack wrappers (APGD-CE, APGD-DLR, Square): the library's own results in pixel
units, budgets, seeds, model modes, EOT draws, Q-networks and the errors users can meet."""

from __future__ import annotations

import copy
import functools
import sys

import pytest
import torch
from torch import nn

from sap_rl.attacks import apgd, parse_attack, predict, square
from sap_rl.errors import UserError
from sap_rl.sap import apply_sap, stochastic_modules

autopgd_base = pytest.importorskip("pyautoattack.autopgd_base")
square_module = pytest.importorskip("pyautoattack.square")


class PixelUnits(nn.Module):
    """A [0, 1] model seen from pixel units, as sap-rl's models are."""

    def __init__(self, unit_model: nn.Module) -> None:
        super().__init__()
        self.unit_model = unit_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit_model(x / 255.0)


@pytest.fixture
def small() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A small deterministic [0, 1] CNN, the same in pixel units, and 12 integer-valued images."""
    torch.manual_seed(0)
    unit = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(144, 5)).eval()
    x = torch.randint(0, 256, (12, 1, 8, 8)).float()
    return unit, PixelUnits(unit), x


def library_seed(seed: int) -> int:
    """The seed the wrappers hand the library for ``torch.Generator().manual_seed(seed)``."""
    return int(torch.randint(2**31 - 1, (), generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_gives_the_librarys_own_result(small: tuple, loss: str) -> None:
    unit, pixels, x = small
    y = pixels(x).argmax(dim=1)
    ours = apgd(pixels, x, 8.0, loss=loss, steps=20, generator=torch.Generator().manual_seed(5))
    seed = library_seed(5)
    # The library on the [0, 1] model: its default output (first fooling point, else clean) ...
    lib = autopgd_base.APGDAttack(unit, n_iter=20, eps=8 / 255, seed=seed, loss=loss, device="cpu")
    fooling = lib.perturb(x / 255, y) * 255
    # ... and its highest-loss points (this mode does not seed itself).
    torch.manual_seed(seed)
    lib = autopgd_base.APGDAttack(unit, n_iter=20, eps=8 / 255, seed=seed, loss=loss, device="cpu")
    highest = lib.perturb(x / 255, y, best_loss=True).detach() * 255
    fooled = pixels(fooling).argmax(dim=1) != y
    assert 0 < int(fooled.sum()) < len(y)  # both kinds of example are checked
    torch.testing.assert_close(ours[fooled], fooling[fooled], rtol=0, atol=1e-4)
    torch.testing.assert_close(ours[~fooled], highest[~fooled], rtol=0, atol=1e-4)


def test_square_gives_the_librarys_own_result(small: tuple) -> None:
    unit, pixels, x = small
    y = pixels(x).argmax(dim=1)
    ours = square(pixels, x, 8.0, queries=100, generator=torch.Generator().manual_seed(5))
    lib = square_module.SquareAttack(unit, n_queries=100, eps=8 / 255, seed=library_seed(5))
    theirs = lib.perturb(x / 255, y) * 255
    fooled = pixels(theirs).argmax(dim=1) != y
    assert int(fooled.sum()) > 0
    torch.testing.assert_close(ours[fooled], theirs[fooled], rtol=0, atol=1e-4)
    # Where the library gives up it returns the clean image; we return its lowest-margin point.
    assert bool((pixels(ours).argmax(dim=1) != y).sum() >= fooled.sum())


def all_wrapped(model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "apgd-ce": apgd(model, x, eps, steps=4, generator=g),
        "apgd-dlr-eot": apgd(model, x, eps, loss="dlr", steps=3, samples=3, generator=g),
        "square": square(model, x, eps, queries=30, generator=g),
        "square-eot": square(model, x, eps, queries=10, samples=3, generator=g),
    }


@pytest.mark.parametrize("eps", [0.5, 4.0, 300.0])
def test_outputs_stay_in_the_eps_ball_and_pixel_range(
    digits_model: nn.Module, digits: tuple, eps: float
) -> None:
    x = digits[2][:8].clone()
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 255.0
    model = apply_sap(copy.deepcopy(digits_model), 1.0)
    for name, x_adv in all_wrapped(model, x, eps).items():
        assert x_adv.dtype == x.dtype and x_adv.shape == x.shape, name
        assert float((x_adv - x).abs().max()) <= eps + 1e-4, name
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 255.0, name
        assert not x_adv.requires_grad, name


def test_per_example_and_zero_eps(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:4]
    eps = torch.tensor([0.0, 2.0, 8.0, 8.0])
    for name, x_adv in all_wrapped(digits_model, x, eps).items():
        dist = (x_adv - x).abs().flatten(1).amax(dim=1)
        assert bool((dist <= eps + 1e-4).all()), name
        assert torch.equal(x_adv[0], x[0]), name
    assert torch.equal(apgd(digits_model, x, 0.0), x)
    assert torch.equal(parse_attack("square-eot").run(digits_model, x, 0), x)


def test_modes_restored_and_no_parameter_gradients(digits_model: nn.Module, digits: tuple) -> None:
    model = apply_sap(copy.deepcopy(digits_model), 0.5)
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    all_wrapped(model, digits[2][:4], 4.0)
    apgd(model, digits[2][:4], 4.0, steps=2, stochastic=False)
    assert [m.training for m in model.modules()] == flags
    assert all(m.enabled for m in stochastic_modules(model))
    assert all(p.grad is None for p in model.parameters())


def test_seeded_and_the_callers_rng_untouched(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:6]
    for name, attack in (
        ("apgd", functools.partial(apgd, steps=5)),
        ("square", functools.partial(square, queries=30)),
    ):
        state = torch.get_rng_state()
        a = attack(digits_model, x, 8.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(torch.get_rng_state(), state), name
        b = attack(digits_model, x, 8.0, generator=torch.Generator().manual_seed(1))
        c = attack(digits_model, x, 8.0, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_apgd_eot_averages_over_several_draws(digits_model: nn.Module, digits: tuple) -> None:
    model = apply_sap(copy.deepcopy(digits_model), 1.0)
    calls: list[int] = []
    hook = model.features.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    x = digits[2][:5]
    try:
        apgd(model, x, 8.0, steps=3, samples=4, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    # The labels: 4 draws in one batch; then a 4-draw gradient at the start and after each step.
    assert calls == [20] + [5] * (4 * (1 + 3))


def test_square_eot_scores_the_mean_of_several_draws(
    digits_model: nn.Module, digits: tuple
) -> None:
    model = apply_sap(copy.deepcopy(digits_model), 1.0)
    calls: list[int] = []
    hook = model.features.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        square(model, digits[2][:2], 1.0, queries=3, samples=5)
    finally:
        hook.remove()
    assert calls and all(n % 5 == 0 for n in calls)  # every query: 5 draws in one batch


def test_strength_on_digits(digits_model: nn.Module, digits: tuple) -> None:
    x, y = digits[2][:32], digits[3][:32]
    clean = float((predict(digits_model, x).argmax(dim=1) == y).float().mean())
    g = torch.Generator().manual_seed(0)
    for name in ("apgd-ce-10", "apgd-dlr-10", "square-200"):
        x_adv = parse_attack(name).run(digits_model, x, 32.0, target=y, generator=g)
        acc = float((predict(digits_model, x_adv).argmax(dim=1) == y).float().mean())
        assert acc < 0.5 * clean, name


def test_q_network_through_the_rl_attack() -> None:
    from sap_rl.defenses import apply_defense
    from sap_rl.rl.agent import QNetwork
    from sap_rl.rl.perturb import ObservationAttack

    torch.manual_seed(0)
    net = apply_defense(QNetwork(4), "sap-100")
    x = torch.randint(0, 256, (2, 4, 84, 84)).float()
    for name, mode in (
        ("apgd-ce-2-eot", "stack"),
        ("apgd-dlr-2", "last"),
        ("square-5", "stack"),
        ("square-5-eot", "last"),  # the newest-frame model holds every row's older frames
    ):
        attack = ObservationAttack(
            net, name, 2.0, perturb=mode, eot_samples=2, generator=torch.Generator()
        )
        actions, seen = attack.act(x)
        assert actions.shape == (2,), name
        assert float((seen - x).abs().max()) <= 2.0, name
        if mode == "last":
            assert torch.equal(seen[:, :3], x[:, :3]), name


def test_dlr_needs_three_classes() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(UserError, match=r"apgd-dlr needs at least 3 classes .* has 2"):
        apgd(net, torch.rand(2, 1, 4, 4) * 255, 2.0, loss="dlr")
    apgd(net, torch.rand(2, 1, 4, 4) * 255, 2.0, steps=2)  # CE is fine with 2 classes


def test_bad_arguments() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="image batch"):
        square(net, torch.rand(2, 16) * 255, 2.0)
    with pytest.raises(ValueError, match="steps must be"):
        apgd(net, torch.rand(2, 16) * 255, 2.0, steps=0)
    with pytest.raises(ValueError, match="eps must be finite"):
        apgd(net, torch.rand(2, 16) * 255, -1.0)


def test_missing_library_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyautoattack.autopgd_base", None)
    for name in ("apgd-ce", "square-eot"):
        with pytest.raises(UserError, match="pip install pyautoattack") as err:
            parse_attack(name)
        assert "\n" not in str(err.value)
    assert parse_attack("pgd-10").kind == "pgd"  # the other attacks do not need it


@pytest.mark.parametrize(
    "name", ["fgsm-eot", "fgsm-ll", "pgd-3-cw-r2-eot", "pgd-2-ll-r2", "apgd-ce-3-eot", "square-20"]
)
def test_stochastic_false_attacks_the_dense_network(
    digits_model: nn.Module, digits: tuple, name: str
) -> None:
    # The interface a transfer attack needs: made on the dense network (same weights), for the
    # defended one.
    x = digits[2][:6]
    spec = parse_attack(name)
    defended = apply_sap(copy.deepcopy(digits_model), 1.0)
    on_dense = spec.run(digits_model, x, 4.0, generator=torch.Generator().manual_seed(0))
    transfer = spec.run(
        defended, x, 4.0, generator=torch.Generator().manual_seed(0), stochastic=False
    )
    assert torch.equal(transfer, on_dense)
