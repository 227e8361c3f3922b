"""A strided ``nn.Conv2d`` whose input gradient is computed by space-to-depth.

Gradient attacks need ``d loss / d input`` of the first convolution. For a stride-``s`` kernel of
size ``k`` (the Nature-DQN first layer: ``k = 8``, ``s = 4``), PyTorch's CPU backward is a strided
transposed convolution, several times slower than the forward pass. When ``s`` divides ``k`` and
the input size, the same gradient is a stride-1 transposed convolution on the space-to-depth
rearranged problem (``s * s`` times the channels, a ``k / s`` kernel), which runs ~4x faster at
batch 1 to 16 on one CPU thread (``python benchmarks/bench_fast_conv.py``).

The forward pass is ``F.conv2d`` itself, bit for bit, so Q-values, actions and clean play do not
change; only the rounding of the input gradient differs (about 1e-6 relative). Weight and bias
gradients (training) use PyTorch's own backward.

Example:
    >>> conv = FastInputGradConv2d(4, 32, kernel_size=8, stride=4)
    >>> x = torch.rand(2, 4, 84, 84, requires_grad=True)
    >>> conv(x).sum().backward()
    >>> x.grad.shape
    torch.Size([2, 4, 84, 84])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["FastInputGradConv2d", "space_to_depth_applies"]


def space_to_depth_applies(conv: nn.Conv2d, height: int, width: int) -> bool:
    """Whether the space-to-depth input gradient is exact for ``conv`` on ``height x width``.

    Example:
        >>> space_to_depth_applies(nn.Conv2d(4, 32, 8, stride=4), 84, 84)
        True
        >>> space_to_depth_applies(nn.Conv2d(4, 32, 3, stride=2), 84, 84)
        False
    """
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    return (
        conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.padding_mode == "zeros"
        and (sh, sw) != (1, 1)
        and kh % sh == 0
        and kw % sw == 0
        and height % sh == 0
        and width % sw == 0
    )


class _Conv2dSpaceToDepthGrad(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad_out, weight, ctx.stride, x.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                list(ctx.stride), [0, 0], [1, 1], False, [0, 0], 1,
                [False, bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])],
            )  # fmt: skip
        return grad_x, grad_w, grad_b, None


def _input_grad(
    grad_out: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], shape: torch.Size
) -> torch.Tensor:
    """``d conv2d(x, weight, stride) / d x`` applied to ``grad_out``, by space-to-depth."""
    batch, channels, height, width = shape
    out_ch, _, kh, kw = weight.shape
    sh, sw = stride
    # weight[o, c, a*sh + i, b*sw + j] -> w2[o, (c, i, j), a, b]: a stride-1 kernel on blocks.
    w2 = weight.reshape(out_ch, channels, kh // sh, sh, kw // sw, sw)
    w2 = w2.permute(0, 1, 3, 5, 2, 4).reshape(out_ch, channels * sh * sw, kh // sh, kw // sw)
    blocks = F.conv_transpose2d(grad_out, w2.contiguous())  # (B, C*sh*sw, H/sh, W/sw)
    blocks = blocks.reshape(batch, channels, sh, sw, height // sh, width // sw)
    return blocks.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height, width)


class FastInputGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same forward) with a space-to-depth input gradient.

    Falls back to the plain ``nn.Conv2d`` path when the shortcut does not apply
    (:func:`space_to_depth_applies`) or no gradient is being recorded.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.Conv2d.forward``; records the fast backward when ``x`` needs a gradient."""
        if (
            torch.is_grad_enabled()
            and x.requires_grad
            and x.ndim == 4
            and space_to_depth_applies(self, x.shape[2], x.shape[3])
        ):
            apply = _Conv2dSpaceToDepthGrad.apply
            out: torch.Tensor = apply(x, self.weight, self.bias, self.stride)
            return out
        return super().forward(x)
