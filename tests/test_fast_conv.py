"""Tests of the space-to-depth input gradient of strided convolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sap_rl.fast_conv import FastInputGradConv2d, space_to_depth_applies


def _pair(*args: object, **kwargs: object) -> tuple[nn.Conv2d, FastInputGradConv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(*args, **kwargs).double()  # type: ignore[arg-type]
    fast = FastInputGradConv2d(*args, **kwargs).double()  # type: ignore[arg-type]
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "size"),
    [(4, 32, 8, 4, 84), (3, 5, 4, 2, 10), (2, 3, (4, 6), (2, 3), 12), (1, 2, 2, 2, 4)],
)
def test_forward_is_identical_and_gradients_match(
    in_ch: int, out_ch: int, kernel: object, stride: object, size: int
) -> None:
    plain, fast = _pair(in_ch, out_ch, kernel, stride=stride)
    x = torch.rand(3, in_ch, size, size, dtype=torch.float64, requires_grad=True)
    assert space_to_depth_applies(fast, size, size)
    y_plain, y_fast = plain(x), fast(x)
    assert torch.equal(y_plain, y_fast)
    upstream = torch.randn_like(y_plain)
    grads_plain = torch.autograd.grad(y_plain, [x, plain.weight, plain.bias], upstream)
    grads_fast = torch.autograd.grad(y_fast, [x, fast.weight, fast.bias], upstream)
    for a, b in zip(grads_plain, grads_fast, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_in_float64() -> None:
    _, fast = _pair(2, 3, 4, stride=2)
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (x,))


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [({"kernel_size": 3, "stride": 2}, 8), ({"kernel_size": 4, "stride": 2, "padding": 1}, 8),
     ({"kernel_size": 4, "stride": 2}, 9), ({"kernel_size": 3, "stride": 1}, 8)],
)  # fmt: skip
def test_other_shapes_fall_back_to_the_plain_convolution(kwargs: dict, size: int) -> None:
    plain, fast = _pair(2, 3, **kwargs)
    assert not space_to_depth_applies(fast, size, size)
    x = torch.rand(2, 2, size, size, dtype=torch.float64, requires_grad=True)
    (g_plain,) = torch.autograd.grad(plain(x).sum(), x)
    (g_fast,) = torch.autograd.grad(fast(x).sum(), x)
    assert torch.equal(g_plain, g_fast)


def test_state_dict_names_are_those_of_nn_conv2d() -> None:
    assert FastInputGradConv2d(4, 8, 4, stride=2).state_dict().keys() == {"weight", "bias"}
    fast = FastInputGradConv2d(1, 2, 2, stride=2, bias=False).double()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    fast(x).sum().backward()
    assert x.grad is not None and fast.weight.grad is not None
