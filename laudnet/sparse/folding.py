"""Folding BatchNorm into the convolution before it.

In evaluation BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one conv
with scaled weights and a bias. The engine runs only folded convs: one op (and one pass
over the activations) less per layer, and a bias the sparse paths can add exactly where
outputs are computed.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from ..errors import UsageError


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight, bias)`` of the conv equivalent to ``bn(conv(x))`` in eval mode.

    ``bn`` is a ``BatchNorm2d`` with running statistics or torchvision's ``FrozenBatchNorm2d``
    (what detectors train with). The per-channel scale and bias are computed in float64, so each
    folded weight is rounded once, like the product the unfolded model computes.
    """
    frozen = isinstance(bn, FrozenBatchNorm2d)
    if not frozen and (not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats):
        raise UsageError(f"expected a BatchNorm2d with running statistics after {conv}, got {bn}")
    affine = frozen or bn.affine
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if affine:
        scale = scale * bn.weight.detach().double()
    bias = -bn.running_mean.double() * scale
    if affine:
        bias = bias + bn.bias.detach().double()
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    weight = conv.weight.detach()
    return (weight * scale.to(weight.dtype)[:, None, None, None]).contiguous(), bias.to(weight.dtype)
