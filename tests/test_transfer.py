"""Transfer attacks (``transfer-<attack>``): made on the dense network, applied to the defended."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sap_rl.attacks import input_gradient, parse_attack
from sap_rl.defenses import apply_defense
from sap_rl.errors import UserError
from sap_rl.rl.agent import QNetwork
from sap_rl.rl.perturb import ObservationAttack
from sap_rl.sap import apply_sap


def test_grammar() -> None:
    spec = parse_attack("Transfer-PGD-10-eot")
    assert (spec.name, spec.kind, spec.steps, spec.eot, spec.transfer) == (
        "transfer-pgd-10-eot", "pgd", 10, True, True,
    )  # fmt: skip
    assert not parse_attack("pgd-10").transfer
    for bad in ("transfer-", "transfer-foo", "transfer-transfer-fgsm", "transfer-pgd-0"):
        with pytest.raises(UserError) as err:
            parse_attack(bad)
        assert "\n" not in str(err.value) and repr(bad) in str(err.value)
    with pytest.raises(UserError, match="at most 1000 PGD steps"):
        parse_attack("transfer-pgd-5000")


class _GradientLog(nn.Module):
    """The model, recording the gradient reaching its input at every backward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grads: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(lambda g: self.grads.append(g.detach().clone()))
        return self.model(x)


@pytest.mark.parametrize("name", ["fgsm", "fgsm-eot", "pgd-3", "pgd-3-cw-r2-eot"])
def test_transfer_uses_the_dense_networks_gradients(
    digits_model: nn.Module, digits: tuple, name: str
) -> None:
    x = digits[2][:16]
    defended = _GradientLog(apply_sap(copy.deepcopy(digits_model), 1.0))
    dense = _GradientLog(copy.deepcopy(digits_model))
    ours = parse_attack(f"transfer-{name}").run(
        defended, x, 8.0, eot_samples=4, generator=torch.Generator().manual_seed(3)
    )
    theirs = parse_attack(name).run(
        dense, x, 8.0, eot_samples=4, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(ours, theirs)
    assert len(defended.grads) == len(dense.grads) > 0
    for a, b in zip(defended.grads, dense.grads, strict=True):
        assert torch.equal(a, b)
    # and the defended model's own gradient is another one (SAP is on)
    labels = digits_model(x).argmax(1)
    assert not torch.equal(input_gradient(defended.model, x, labels), dense.grads[0])


@pytest.mark.parametrize("perturb", ["stack", "last"])
def test_rl_transfer_targets_the_dense_action(perturb: str) -> None:
    torch.manual_seed(0)
    net = QNetwork(6)
    x = torch.rand(3, 4, 84, 84) * 255
    defended = apply_defense(copy.deepcopy(net), "sap-50")
    ours = ObservationAttack(defended, "transfer-pgd-2", 4.0, perturb=perturb,  # type: ignore[arg-type]
                             generator=torch.Generator().manual_seed(1))  # fmt: skip
    theirs = ObservationAttack(net, "pgd-2", 4.0, perturb=perturb,  # type: ignore[arg-type]
                               generator=torch.Generator().manual_seed(1))  # fmt: skip
    actions, seen = ours.act(x)  # the PGD start comes from the generator: one call each
    assert torch.equal(seen, theirs.perturb(x))
    assert actions.shape == (3,)
