"""Maskers: the small networks that decide, per input, what a residual block computes.

Both maskers read the block's input and start with every gate on (their decisive layer has
zero weights and a bias favouring *compute*), so a model converted from pretrained static
weights begins as the static model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gates import gate
from .geometry import grid_size
from ..errors import UsageError

# Initial (compute, skip) logit biases: every gate starts on, as in the official recipe.
SPATIAL_BIASES = (5.0, 0.0)
CHANNEL_BIASES = (2.0, -2.0)

# Channel masker designs: laudnet's MLP on the pooled input, and the official code's ``conv_linear``.
CHANNEL_MASKERS: tuple[str, ...] = ("mlp", "conv_linear")


class _Masker(nn.Module):
    """Shared state of maskers: the Gumbel temperature and an optional forced decision."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = 1.0
        self.force: bool | None = None

    def _gate(self, logits: torch.Tensor) -> torch.Tensor:
        return gate(logits, self.temperature, self.training, self.force)


def _init_decision_layer(layer: nn.Module, decisions: int, biases: tuple[float, float]) -> None:
    """Zero the weights and set the *compute* / *skip* logit biases."""
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias[:decisions] = biases[0]
        layer.bias[decisions:] = biases[1]


class SpatialMasker(_Masker):
    """Decides per cell of ``S×S`` output pixels (or per image, for layer skipping).

    The block input is average-pooled to the ``ceil(Ho/S) × ceil(Wo/S)`` grid of the block's
    output and a 1×1 conv gives two logits per cell.
    """

    def __init__(self, in_channels: int, granularity: int, whole_block: bool = False) -> None:
        super().__init__()
        self.granularity = granularity
        self.whole_block = whole_block
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1, bias=True)
        _init_decision_layer(self.conv, 1, SPATIAL_BIASES)

    def grid(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        """Cell grid for a block output of size ``out_hw``."""
        return (1, 1) if self.whole_block else grid_size(out_hw, self.granularity)

    def macs(self, out_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of the 1×1 conv on the cell grid, per image."""
        return self.conv_macs(self.conv.in_channels, self.grid(out_hw))

    @staticmethod
    def conv_macs(in_channels: int, grid: tuple[int, int]) -> int:
        """MACs of the masker's 1×1 conv (two logits per cell) on a ``grid`` of cells."""
        return in_channels * 2 * grid[0] * grid[1]

    def forward(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """Return the ``(B, 1, gh, gw)`` 0/1 cell mask for input ``x``."""
        grid = self.grid(out_hw)
        # A grid as fine as the input (stride-1 blocks at S=1) needs no pooling.
        pooled = x if tuple(x.shape[-2:]) == grid else F.adaptive_avg_pool2d(x, grid)
        return self._gate(self.conv(pooled).unsqueeze(2))


class ChannelMasker(_Masker):
    """Decides per group of ``G`` consecutive bottleneck channels.

    Global average pooling of the block input, then an MLP (hidden width
    ``max(groups // reduction, 16)``) or a single linear layer gives two logits per group,
    laid out as ``[on_0 … on_{g-1}, off_0 … off_{g-1}]``.
    """

    def __init__(self, in_channels: int, num_groups: int, layers: int = 2, reduction: int = 16) -> None:
        super().__init__()
        self.num_groups = num_groups
        linears = [nn.Linear(i, o) for i, o in self.layer_sizes(in_channels, num_groups, layers, reduction)]
        if len(linears) == 2:
            linears.insert(1, nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*linears)
        _init_decision_layer(self.layers[-1], num_groups, CHANNEL_BIASES)

    @staticmethod
    def layer_sizes(in_channels: int, num_groups: int, layers: int = 2, reduction: int = 16) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` features of each linear layer: one, or two with a hidden width of
        ``max(num_groups // reduction, 16)``."""
        if layers not in (1, 2):
            raise UsageError(f"channel masker layers must be 1 or 2, got {layers}")
        if layers == 1:
            return ((in_channels, 2 * num_groups),)
        hidden = max(num_groups // reduction, 16)
        return ((in_channels, hidden), (hidden, 2 * num_groups))

    def macs(self) -> int:
        """Multiply-accumulates of the linear layers, per image."""
        return sum(m.in_features * m.out_features for m in self.layers if isinstance(m, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, num_groups)`` 0/1 group mask for input ``x``."""
        pooled = x.mean(dim=(2, 3))
        logits = self.layers(pooled).view(x.shape[0], 2, self.num_groups)
        return self._gate(logits)


class ConvLinearChannelMasker(_Masker):
    """The official LAUDNet ``conv_linear`` channel masker, for official checkpoints that use it.

    A 1×1 conv (``in → in // reduction``, no bias) with BatchNorm and ReLU on the block input at
    full resolution, global average pooling, then one linear layer giving two logits per group
    (laid out as :class:`ChannelMasker`'s). Its sub-modules carry the official names (``conv``,
    ``linear``), so official weights load without renaming.
    """

    def __init__(self, in_channels: int, num_groups: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = in_channels // reduction
        if hidden < 1:
            raise UsageError(f"conv_linear channel masker: reduction {reduction} leaves no channels of {in_channels}")
        self.num_groups = num_groups
        self.conv = nn.Sequential(nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True))
        self.linear = nn.Linear(hidden, 2 * num_groups)
        _init_decision_layer(self.linear, num_groups, CHANNEL_BIASES)

    def macs(self, in_hw: tuple[int, int]) -> int:
        """Multiply-accumulates per image for a block input of size ``in_hw``: the 1×1 conv at every
        position, then the linear layer."""
        conv, linear = self.conv[0], self.linear
        return conv.in_channels * conv.out_channels * in_hw[0] * in_hw[1] + linear.in_features * linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, num_groups)`` 0/1 group mask for input ``x``."""
        pooled = self.conv(x).mean(dim=(2, 3))
        logits = self.linear(pooled).view(x.shape[0], 2, self.num_groups)
        return self._gate(logits)
