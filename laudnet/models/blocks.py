"""The dynamic residual bottleneck shared by LAUD-ResNet and LAUD-RegNetY.

Both families compute ``act(shortcut(x) + mask · c(se(b(a(x)))))`` with a 1×1 conv ``a``,
a 3×3 (possibly grouped, possibly strided) conv ``b``, an optional squeeze-excitation and
a 1×1 conv ``c``. Subclasses only create the layers under torchvision's names (so their
state_dict keys are torchvision's); their family adapter (:mod:`.family`) says where they
are. The forward pass, the masks and the statistics are written once, here.

What a stage's :class:`~laudnet.dynamic.spec.StageSpec` switches on:

* spatial / layer: ``c``'s output is multiplied by the pixel mask before the residual add,
  so skipped positions (or a skipped block) contribute exactly nothing; the SE pools over
  the computed positions only.
* channel: ``a``'s and ``b``'s activations are multiplied by the channel mask after BN and
  activation, so skipped channels are exactly zero (``channel_mask_placement="before_bn"``
  reproduces the official LAUDNet ResNet code, which masks before BN).

Options for official LAUDNet checkpoints (:func:`laudnet.models.from_official` sets them):
``se_pooling="all"`` (the squeeze-excitation pools over every position, as the official RegNet
does), ``channel_masker="conv_linear"`` (the official conv + linear masker) and
``split_conv_groups=True`` (a ``G`` that splits a grouped conv2's groups, as the official RegNet
channel recipe's G=1 does; conv2's MACs then scale with the kept fraction squared). The sparse
engine runs none of them: :meth:`DynamicBottleneck.check_sparse_support` says which a block uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..dynamic.geometry import expand_cells, input_mask
from ..dynamic.maskers import CHANNEL_MASKERS, ChannelMasker, ConvLinearChannelMasker, SpatialMasker
from ..dynamic.spec import StageSpec
from ..dynamic.stats import BlockStats
from ..errors import UsageError
from .family import BlockLayout, Family
from .structure import BlockShape, Number, block_shape, conv_output_hw

CHANNEL_MASK_PLACEMENTS: tuple[str, ...] = ("after_act", "before_bn")
SE_POOLINGS: tuple[str, ...] = ("computed", "all")


@dataclass
class BlockMasks:
    """The decisions of one block for a batch (``None`` where the block has no such masker).

    ``conv1`` and ``conv3`` are 0/1 pixel masks of shape ``(B, 1, H, W)`` (or ``(B, 1, 1, 1)``
    for a whole-block gate); conv2 computes where conv3 does. ``channel`` is ``(B, width)``.
    """

    cells: torch.Tensor | None
    conv1: torch.Tensor | None
    conv3: torch.Tensor | None
    channel_groups: torch.Tensor | None
    channel: torch.Tensor | None


class DynamicBottleneck(nn.Module):
    """Base class: subclasses create layers, then call :meth:`_add_maskers`; their ``family``
    adapter describes the layout."""

    family: Family

    def __init__(
        self,
        name: str,
        stage: int,
        spec: StageSpec,
        channel_mask_placement: str = "after_act",
        masker_layers: int = 2,
        masker_reduction: int = 16,
        se_pooling: str = "computed",
        channel_masker: str = "mlp",
        split_conv_groups: bool = False,
    ) -> None:
        super().__init__()
        for option, value, accepted in (("channel_mask_placement", channel_mask_placement, CHANNEL_MASK_PLACEMENTS),
                                        ("se_pooling", se_pooling, SE_POOLINGS),
                                        ("channel_masker", channel_masker, CHANNEL_MASKERS)):
            if value not in accepted:
                raise UsageError(f"{option} must be one of {', '.join(accepted)}, got {value!r}")
        for option, value in (("masker_layers", masker_layers), ("masker_reduction", masker_reduction)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{option} must be a positive integer, got {value!r}")
        if not isinstance(split_conv_groups, bool):
            raise UsageError(f"split_conv_groups must be true or false, got {split_conv_groups!r}")
        self.block_name = name
        self.stage = stage
        self.spec = spec
        self.channel_mask_placement = channel_mask_placement
        self.masker_options = (masker_layers, masker_reduction)
        self.se_pooling = se_pooling
        self.channel_masker_kind = channel_masker
        self.split_conv_groups = split_conv_groups
        self.masker_spatial: SpatialMasker | None = None
        self.masker_channel: ChannelMasker | ConvLinearChannelMasker | None = None
        self.last_stats: BlockStats | None = None

    def layout(self) -> BlockLayout:
        """The block's layers, as its family lays them out (read on every call: detection swaps norms)."""
        return self.family.block(self)

    # -- construction ---------------------------------------------------------------------
    def _add_maskers(self) -> None:
        layout = self.layout()
        a, b = layout.a, layout.b
        width, groups = a.conv.out_channels, b.conv.groups
        spec = self.spec
        if spec.has_channel:
            g = spec.channel_granularity
            group_width = width // groups
            if width % g != 0:
                raise UsageError(
                    f"channel_granularity G={g} does not divide the width {width} of {self.block_name} "
                    f"(stage {self.stage + 1}); accepted: divisors of {width}"
                )
            if groups > 1 and g % group_width != 0 and not self.split_conv_groups:
                raise UsageError(
                    f"channel_granularity G={g} would split the conv groups of width {group_width} in "
                    f"{self.block_name} (stage {self.stage + 1}); accepted: multiples of {group_width} "
                    f"that divide {width} (official LAUDNet checkpoints that split groups load through "
                    "laudnet.models.from_official)"
                )
            layers, reduction = self.masker_options
            if self.channel_masker_kind == "conv_linear":
                self.masker_channel = ConvLinearChannelMasker(a.conv.in_channels, width // g, reduction)
            else:
                self.masker_channel = ChannelMasker(a.conv.in_channels, width // g, layers, reduction)
        if spec.has_spatial:
            self.masker_spatial = SpatialMasker(
                a.conv.in_channels, spec.spatial_granularity, whole_block=spec.mode == "layer"
            )

    # -- structure ------------------------------------------------------------------------
    def shape_at(self, in_hw: tuple[int, int]) -> BlockShape:
        """The block's static structure for an input of spatial size ``in_hw``."""
        return block_shape(self.layout(), self.block_name, self.stage, in_hw, self.spec, self.masker_options)

    @property
    def splits_conv_groups(self) -> bool:
        """Whether a channel group covers part of a conv group of a grouped conv2 (``split_conv_groups``)."""
        groups = self.layout().b.conv.groups
        group_width = self.layout().a.conv.out_channels // groups
        return self.spec.has_channel and groups > 1 and self.spec.channel_granularity % group_width != 0

    def conv2_density(self, spatial: Number, channel: Number) -> Number:
        """The density to give :meth:`BlockShape.dynamic_macs` for conv2: its computed positions, times
        the kept channel fraction again where channel groups split conv groups (conv2's inputs and outputs
        then both shrink, as in a dense conv2; the shape's formula scales a grouped conv2 once)."""
        return spatial * channel if self.splits_conv_groups else spatial

    def masker_macs_beyond_shape(self, in_hw: tuple[int, int]) -> int:
        """Masker MACs per image that :meth:`BlockShape.masker_macs` leaves out: the ``conv_linear``
        masker's 1×1 conv runs at every input position (the shape counts an MLP's linear layers)."""
        if not isinstance(self.masker_channel, ConvLinearChannelMasker):
            return 0
        counted = sum(i * o for i, o in self.shape_at(in_hw).channel_masker_sizes())
        return self.masker_channel.macs(in_hw) - counted

    def check_sparse_support(self) -> None:
        """Raise :class:`UsageError` naming the options of this block the sparse engine cannot run exactly."""
        problems = []
        if self.masker_channel is not None and self.channel_mask_placement != "after_act":
            problems.append(f"channel_mask_placement={self.channel_mask_placement!r} (skipped channels are not zero)")
        if self.se_pooling == "all" and self.masker_spatial is not None and self.layout().se is not None:
            problems.append("se_pooling='all' (the squeeze-excitation reads skipped positions)")
        if isinstance(self.masker_channel, ConvLinearChannelMasker):
            problems.append("channel_masker='conv_linear'")
        if self.splits_conv_groups:
            problems.append(f"channel groups of G={self.spec.channel_granularity} that split conv2's groups")
        if problems:
            raise UsageError(f"{self.block_name}: the sparse engine cannot run {', '.join(problems)}; "
                             "it runs laudnet's own options (after_act masks, MLP maskers, SE over computed "
                             "positions, whole conv groups)")

    # -- forward --------------------------------------------------------------------------
    def compute_masks(self, x: torch.Tensor) -> BlockMasks:
        """Run the maskers on block input ``x`` and derive every pixel / channel mask."""
        in_hw = tuple(x.shape[-2:])
        b = self.layout().b.conv
        cells = conv1 = conv3 = groups = channel = None
        if self.masker_spatial is not None:
            out_hw = conv_output_hw(in_hw, 3, b.stride[0], b.padding[0])
            cells = self.masker_spatial(x, out_hw)
            conv3 = expand_cells(cells, self.spec.spatial_granularity, out_hw)
            conv1 = input_mask(conv3, in_hw, kernel=3, stride=b.stride[0])
        if self.masker_channel is not None:
            groups = self.masker_channel(x)
            channel = groups.repeat_interleave(self.spec.channel_granularity, dim=1)
        return BlockMasks(cells, conv1, conv3, groups, channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output; what it computed is left in :attr:`last_stats`.

        Statistics travel beside the tensor (not in a tuple) so that blocks and stages stay
        ordinary modules: hooks fire and torchvision utilities can call them.
        """
        masks = self.compute_masks(x)
        layout = self.layout()
        channel = masks.channel[:, :, None, None] if masks.channel is not None else None
        out = self._run_unit(layout.a, x, channel)
        out = self._run_unit(layout.b, out, channel)
        if layout.se is not None:
            out = self._squeeze_excite(layout.se, out, masks.conv3 if self.se_pooling == "computed" else None)
        out = layout.c.norm(layout.c.conv(out))
        if masks.conv3 is not None:
            out = out * masks.conv3
        shortcut = layout.projection[1](layout.projection[0](x)) if layout.projection is not None else x
        out = layout.out_act(out + shortcut)
        self.last_stats = self.statistics(masks, x)
        return out

    def _run_unit(self, unit, x: torch.Tensor, channel: torch.Tensor | None) -> torch.Tensor:
        y = unit.conv(x)
        if channel is not None and self.channel_mask_placement == "before_bn":
            y = y * channel
        y = unit.norm(y)
        if unit.act is not None:
            y = unit.act(y)
        if channel is not None and self.channel_mask_placement == "after_act":
            y = y * channel
        return y

    @staticmethod
    def _squeeze_excite(se: nn.Module, x: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """Squeeze-excitation whose pooling averages over the positions ``pixels`` marks (all without it)."""
        if pixels is None or pixels.shape[-2:] == (1, 1):
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:
            count = pixels.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
            pooled = (x * pixels).sum(dim=(2, 3), keepdim=True) / count
        scale = se.scale_activation(se.fc2(se.activation(se.fc1(pooled))))
        return x * scale

    def statistics(self, masks: BlockMasks, x: torch.Tensor) -> BlockStats:
        """What the block computes with ``masks`` on input ``x``, per sample."""
        # float64: MACs in the billions stay exact, and AMP's low-precision masks average exactly.
        in_hw = tuple(x.shape[-2:])
        shape = self.shape_at(in_hw)
        ones = x.new_ones(x.shape[0], dtype=torch.float64)
        d1 = masks.conv1.double().mean(dim=(1, 2, 3)) if masks.conv1 is not None else ones
        d3 = masks.conv3.double().mean(dim=(1, 2, 3)) if masks.conv3 is not None else ones
        se_active = masks.cells.double().amax(dim=(1, 2, 3)) if masks.cells is not None else ones
        cd = masks.channel_groups.double().mean(dim=1) if masks.channel_groups is not None else ones
        dynamic = shape.dynamic_macs(d1, self.conv2_density(d3, cd), d3, cd, se_active) \
            + self.masker_macs_beyond_shape(in_hw)
        return BlockStats(
            name=self.block_name,
            stage=self.stage,
            dynamic=self.spec.is_dynamic,
            conv1_density=d1,
            conv2_density=d3,
            conv3_density=d3,
            channel_density=cd,
            dense_macs=shape.dense_macs,
            dynamic_macs=dynamic,
            spatial_mask=masks.cells,
            channel_mask=masks.channel_groups,
        )
