"""Tests of the gradient attacks and attack names: budgets, mode restoration, agreement with ART,
strength ordering, EOT, the margin loss and restarts (AutoAttack's: tests/test_autoattack.py)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from sap_rl.attacks import (
    MAX_ATTACK_RESTARTS,
    MAX_ATTACK_STEPS,
    MAX_EOT_SAMPLES,
    MAX_SQUARE_QUERIES,
    AttackSpec,
    check_eot_samples,
    fgsm,
    fgsm_ll,
    input_gradient,
    margin_loss,
    parse_attack,
    pgd,
    pgd_ll,
    predict,
)
from sap_rl.errors import UserError
from sap_rl.sap import apply_sap, stochastic_modules


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int = 1) -> float:
    return float((predict(model, x, samples=samples).argmax(dim=1) == y).float().mean())


def all_attacks(
    model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fgsm": fgsm(model, x, eps),
        "fgsm-eot": fgsm(model, x, eps, samples=4),
        "fgsm-ll": fgsm_ll(model, x, eps),
        "pgd": pgd(model, x, eps, steps=3, generator=g),
        "pgd-eot": pgd(model, x, eps, steps=2, samples=3, generator=g),
        "pgd-ll": pgd_ll(model, x, eps, steps=3, step_size=2.0),
    }


@pytest.mark.parametrize("eps", [0.5, 4.0, 300.0])
def test_outputs_stay_in_the_eps_ball_and_pixel_range(
    digits_model: nn.Module, digits: tuple, eps: float
) -> None:
    x = digits[2][:32].clone()
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 255.0
    model = apply_sap(copy.deepcopy(digits_model), 1.0)
    for name, x_adv in all_attacks(model, x, eps).items():
        assert x_adv.dtype == x.dtype and x_adv.shape == x.shape, name
        assert float((x_adv - x).abs().max()) <= eps + 1e-4, name
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 255.0, name
        assert not x_adv.requires_grad, name


def test_per_example_eps(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:6]
    eps = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    for name, x_adv in all_attacks(digits_model, x, eps).items():
        dist = (x_adv - x).abs().flatten(1).amax(dim=1)
        assert bool((dist <= eps + 1e-4).all()), name
    assert torch.equal(fgsm(digits_model, x, eps)[0], x[0])


def test_attacks_restore_train_eval_flags_and_sap_state(
    digits_model: nn.Module, digits: tuple
) -> None:
    model = apply_sap(copy.deepcopy(digits_model), 0.5)
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    all_attacks(model, digits[2][:4], 2.0)
    fgsm(model, digits[2][:4], 2.0, stochastic=False)
    assert [m.training for m in model.modules()] == flags
    assert all(m.enabled for m in stochastic_modules(model))
    assert all(p.grad is None for p in model.parameters())


def test_batch_norm_statistics_are_not_updated() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )
    net.train()
    before = copy.deepcopy(net.state_dict())
    pgd(net, torch.rand(8, 1, 8, 8) * 255, 8.0, steps=3)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_stochastic_false_attacks_the_dense_network(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:16]
    dense = fgsm(digits_model, x, 4.0)
    defended = apply_sap(copy.deepcopy(digits_model), 1.0)
    assert torch.equal(fgsm(defended, x, 4.0, stochastic=False), dense)
    assert not torch.equal(fgsm(defended, x, 4.0), dense)


def test_fgsm_matches_adversarial_robustness_toolbox(
    digits_model: nn.Module, digits: tuple
) -> None:
    art = pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    x = digits[2][:64]
    classifier = PyTorchClassifier(
        model=digits_model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 255.0),
        device_type="cpu",
    )
    del art
    for eps in (1.0, 8.0, 32.0):
        theirs = FastGradientMethod(classifier, norm=np.inf, eps=eps, targeted=False).generate(
            x.numpy()
        )
        ours = fgsm(digits_model, x, eps)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-4)
        # ART, like us, attacks the model's own clean prediction when no label is given.
        y = digits_model(x).argmax(dim=1)
        torch.testing.assert_close(fgsm(digits_model, x, eps, target=y), ours)


def test_pgd_is_at_least_as_strong_as_fgsm(digits_model: nn.Module, digits: tuple) -> None:
    x, y = digits[2], digits[3]
    clean = accuracy(digits_model, x, y)
    assert clean > 0.9
    g = torch.Generator().manual_seed(0)
    for eps in (8.0, 16.0, 32.0):
        acc_fgsm = accuracy(digits_model, fgsm(digits_model, x, eps, target=y), y)
        acc_pgd = accuracy(
            digits_model, pgd(digits_model, x, eps, steps=10, target=y, generator=g), y
        )
        assert acc_fgsm < clean
        assert acc_pgd <= acc_fgsm
    assert acc_pgd < 0.5 * clean  # eps = 32 grey levels more than halves the accuracy


def test_least_likely_attacks_push_toward_the_least_likely_class(
    digits_model: nn.Module, digits: tuple
) -> None:
    x = digits[2][:200]
    with torch.no_grad():
        probs = digits_model(x).softmax(dim=1)
    y_ll = probs.argmin(dim=1)

    def p_ll(batch: torch.Tensor) -> float:
        with torch.no_grad():
            return float(digits_model(batch).softmax(dim=1).gather(1, y_ll[:, None]).mean())

    base = p_ll(x)
    step = p_ll(fgsm_ll(digits_model, x, 16.0))
    iterative = p_ll(pgd_ll(digits_model, x, 16.0, steps=10, step_size=2.0))
    assert step > base
    assert iterative > step


def test_eot_averages_gradients_and_lowers_their_variance(
    digits_model: nn.Module, digits: tuple
) -> None:
    model = apply_sap(copy.deepcopy(digits_model), 1.0)
    x = digits[2][:16]
    y = digits_model(x).argmax(dim=1)

    def spread(samples: int, repeats: int = 24) -> float:
        grads = torch.stack([input_gradient(model, x, y, samples=samples) for _ in range(repeats)])
        return float(grads.var(dim=0).mean())

    v1, v16 = spread(1), spread(16)
    # Averaging k independent draws divides the variance by k; allow a wide band around 1/16.
    assert v16 < v1 / 6
    # The attack direction of EOT-16 agrees better with the expected gradient (EOT-256).
    reference = input_gradient(model, x, y, samples=256).sign()
    agree1 = float((input_gradient(model, x, y, samples=1).sign() == reference).float().mean())
    agree16 = float((input_gradient(model, x, y, samples=16).sign() == reference).float().mean())
    assert agree16 > agree1


def test_eot_samples_go_through_the_model_as_one_batch() -> None:
    calls: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.net(x)

    model = apply_sap(Counting(), 1.0)
    x = torch.rand(5, 1, 4, 4) * 255
    fgsm(model, x, 2.0, samples=8)
    assert calls == [40, 40]  # clean prediction + one gradient pass, each of 8 x 5 rows
    calls.clear()
    fgsm(model, x, 2.0, samples=8, max_batch=20)
    assert calls == [20, 20, 20, 20]


def test_step_attacks_on_a_deterministic_model_predict_in_their_gradient_pass() -> None:
    calls: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.net(x)

    torch.manual_seed(0)
    model = Counting()
    x = torch.rand(5, 1, 4, 4) * 255
    with torch.no_grad():
        scores = model(x)
    calls.clear()
    for attack, labels, sign in (
        (fgsm, scores.argmax(dim=1), 1.0),
        (fgsm_ll, scores.argmin(dim=1), -1.0),
    ):
        adv = attack(model, x, 2.0)
        assert calls == [5]  # one pass gives the clean prediction and the gradient
        grad = input_gradient(model, x, labels)
        assert torch.equal(adv, (x + 2.0 * sign * grad.sign()).clamp(0, 255))
        calls.clear()
    sap_model = apply_sap(Counting(), 1.0)
    fgsm(sap_model, x, 2.0)
    assert calls == [5, 5]  # a stochastic model: its prediction and the gradient are two draws
    calls.clear()
    fgsm(sap_model, x, 2.0, stochastic=False)
    assert calls == [5]


def test_zero_eps_and_target_semantics(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:8]
    assert torch.equal(fgsm(digits_model, x, 0.0), x)
    assert torch.equal(parse_attack("pgd-5").run(digits_model, x, 0.0), x)
    y = predict(digits_model, x).argmax(dim=1)
    assert torch.equal(fgsm(digits_model, x, 3.0), fgsm(digits_model, x, 3.0, target=y))


def test_same_generator_same_pgd(digits_model: nn.Module, digits: tuple) -> None:
    x = digits[2][:8]
    a = pgd(digits_model, x, 4.0, steps=2, generator=torch.Generator().manual_seed(3))
    b = pgd(digits_model, x, 4.0, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("fgsm", AttackSpec("fgsm", "fgsm")),
        ("FGSM-EOT", AttackSpec("fgsm-eot", "fgsm", eot=True)),
        ("pgd-10", AttackSpec("pgd-10", "pgd", steps=10)),
        ("pgd-7-ll-eot", AttackSpec("pgd-7-ll-eot", "pgd", steps=7, least_likely=True, eot=True)),
        ("fgsm-ll", AttackSpec("fgsm-ll", "fgsm", least_likely=True)),
    ],
)
def test_parse_attack(name: str, spec: AttackSpec) -> None:
    assert parse_attack(name) == spec


@pytest.mark.parametrize("name", ["fgm", "pgd", "pgd-0", "pgd-x", "fgsm-eot-ll", ""])
def test_parse_attack_rejects_unknown_names(name: str) -> None:
    with pytest.raises(UserError, match="valid attacks"):
        parse_attack(name)


def test_attack_steps_are_bounded() -> None:
    assert parse_attack(f"pgd-{MAX_ATTACK_STEPS}-eot").steps == MAX_ATTACK_STEPS == 1000
    for name in ("pgd-1001", "pgd-1000000-eot", "pgd-" + "9" * 5000):  # 5000 digits: no int()
        with pytest.raises(UserError, match="at most 1000 PGD steps") as err:
            parse_attack(name)
        assert len(str(err.value)) < 120  # one short line, even for a name of 5000 characters


def test_eot_samples_are_bounded() -> None:
    assert check_eot_samples(MAX_EOT_SAMPLES) == MAX_EOT_SAMPLES == 1000
    for bad in (0, 1001, 2.0, True):
        with pytest.raises(UserError, match="eot-samples must be an integer from 1 to 1000"):
            check_eot_samples(bad)  # type: ignore[arg-type]


def test_bad_arguments(digits_model: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8) * 255
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        fgsm(digits_model, x, -1.0)
    with pytest.raises(ValueError, match="float batch"):
        fgsm(digits_model, x.to(torch.uint8), 1.0)
    with pytest.raises(ValueError, match="samples must be"):
        fgsm(digits_model, x, 1.0, samples=0)
    with pytest.raises(ValueError, match="steps must be"):
        pgd(digits_model, x, 1.0, steps=0)
    with pytest.raises(ValueError, match="one label per example"):
        fgsm(digits_model, x, 1.0, target=torch.tensor([1, 2, 3]))


def test_eot_on_a_deterministic_model_is_the_plain_attack_in_one_pass(
    digits_model: nn.Module, digits: tuple
) -> None:
    calls: list[int] = []
    hook = digits_model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    x = digits[2][:8]
    try:
        plain = fgsm(digits_model, x, 4.0)
        calls.clear()
        eot = fgsm(digits_model, x, 4.0, samples=16)
        assert calls == [8]  # no 16 identical passes: their average is the one gradient
        assert torch.equal(eot, plain)
        sap_model = apply_sap(copy.deepcopy(digits_model), 1.0)
        calls.clear()
        pgd(sap_model, x, 4.0, steps=2, samples=4, stochastic=False)
        assert calls == [8, 8, 8]  # dense attack on a SAP model: labels + 2 steps, one draw each
    finally:
        hook.remove()


def test_margin_loss() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert margin_loss(logits, torch.tensor([0, 0])).tolist() == [-1.0, 5.0]
    with pytest.raises(ValueError, match="at least 2 classes"):
        margin_loss(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))


def test_cw_pgd_stays_in_the_ball_and_fools(digits_model: nn.Module, digits: tuple) -> None:
    x, y = digits[2][:64], digits[3][:64]
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(digits_model, x, 32.0, steps=10, target=y, loss="cw", generator=g)
    assert float((x_adv - x).abs().max()) <= 32.0 + 1e-4
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 255.0
    assert accuracy(digits_model, x_adv, y) < 0.5 * accuracy(digits_model, x, y)
    # Its gradient is that of the margin: up the runner-up logit, down the label's.
    g_cw = input_gradient(digits_model, x[:4], y[:4], loss="cw")
    g_ce = input_gradient(digits_model, x[:4], y[:4])
    assert g_cw.shape == g_ce.shape and not torch.equal(g_cw, g_ce)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_restarts_are_never_worse_than_their_first_run(
    digits_model: nn.Module, digits: tuple, loss: str
) -> None:
    x, y = digits[2][:48], digits[3][:48]

    def run(restarts: int) -> torch.Tensor:
        return pgd(
            digits_model, x, 6.0, steps=3, target=y, loss=loss, restarts=restarts,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip

    one, five = run(1), run(5)
    assert torch.equal(run(1), one)  # the first run is the single run of the same seed
    with torch.no_grad():
        z1, z5 = digits_model(one), digits_model(five)
    fooled1, fooled5 = z1.argmax(dim=1) != y, z5.argmax(dim=1) != y
    assert bool((fooled5 >= fooled1).all())  # never loses an example the first run fooled
    if loss == "cw":
        value1, value5 = margin_loss(z1, y), margin_loss(z5, y)
    else:
        value1 = nn.functional.cross_entropy(z1, y, reduction="none")
        value5 = nn.functional.cross_entropy(z5, y, reduction="none")
    same = fooled1 == fooled5
    assert bool((value5[same] >= value1[same] - 1e-6).all())
    assert int(fooled5.sum()) > int(fooled1.sum()) or bool((value5 > value1 + 1e-6).any())
    assert float((five - x).abs().max()) <= 6.0 + 1e-4


def test_restarts_need_a_random_start(digits_model: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8) * 255
    with pytest.raises(ValueError, match="need random_start"):
        pgd(digits_model, x, 2.0, steps=2, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="restarts must be"):
        pgd(digits_model, x, 2.0, steps=2, restarts=0)
    with pytest.raises(ValueError, match="loss must be"):
        pgd(digits_model, x, 2.0, steps=2, loss="dlr")  # type: ignore[arg-type]
    # pgd-<k>-ll-r<n> starts every run at random (Kurakin's iter l.l. has no random start).
    x_adv = parse_attack("pgd-2-ll-r2").run(digits_model, x, 2.0, generator=torch.Generator())
    assert float((x_adv - x).abs().max()) <= 2.0 + 1e-4


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("pgd-10-cw", AttackSpec("pgd-10-cw", "pgd", steps=10, loss="cw")),
        (
            "pgd-20-cw-r5-eot",
            AttackSpec("pgd-20-cw-r5-eot", "pgd", 20, eot=True, loss="cw", restarts=5),
        ),
        ("pgd-7-r3", AttackSpec("pgd-7-r3", "pgd", steps=7, restarts=3)),
        ("pgd-7-ll-r2", AttackSpec("pgd-7-ll-r2", "pgd", steps=7, least_likely=True, restarts=2)),
        ("apgd-ce", AttackSpec("apgd-ce", "apgd", steps=100)),
        ("APGD-DLR-EOT", AttackSpec("apgd-dlr-eot", "apgd", steps=100, eot=True, loss="dlr")),
        ("apgd-ce-25-eot", AttackSpec("apgd-ce-25-eot", "apgd", steps=25, eot=True)),
        ("square", AttackSpec("square", "square", steps=5000, loss="margin")),
        ("square-1000-eot", AttackSpec("square-1000-eot", "square", 1000, eot=True, loss="margin")),
    ],
)
def test_parse_new_attacks(name: str, spec: AttackSpec) -> None:
    assert parse_attack(name) == spec


@pytest.mark.parametrize(
    "name",
    ["pgd-10-cw-ll", "pgd-10-ll-cw", "pgd-10-r0", "pgd-10-eot-r5", "pgd-10-r", "fgsm-cw",
     "fgsm-r2", "apgd", "apgd-cw", "apgd-ce-0", "apgd-ce-ll", "square-", "square-0", "square-ll",
     "transfer-pgd-0", "timed-transfer-", "transfer-timed-fgsm", "worst"],
)  # fmt: skip
def test_parse_rejects_malformed_new_names(name: str) -> None:
    with pytest.raises(UserError, match="valid attacks") as err:
        parse_attack(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pgd-10-r101", "at most 100 restarts (-r1 to -r100)"),
        ("pgd-10-cw-r" + "9" * 3000, "at most 100 restarts"),
        ("apgd-ce-1001", "at most 1000 APGD steps (apgd-ce-1 to apgd-ce-1000)"),
        ("apgd-dlr-5000-eot", "at most 1000 APGD steps (apgd-dlr-1 to apgd-dlr-1000)"),
        ("square-10001", "at most 10000 Square queries (square-1 to square-10000)"),
    ],
)
def test_new_counts_are_bounded(name: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as err:
        parse_attack(name)
    assert len(str(err.value)) < 120
    assert parse_attack("pgd-1000-cw-r100").restarts == MAX_ATTACK_RESTARTS == 100
    assert parse_attack("square-10000").steps == MAX_SQUARE_QUERIES == 10000
