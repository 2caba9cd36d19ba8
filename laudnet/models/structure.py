"""Static description of a backbone's layers and feature sizes at a given input size.

The latency predictor, the MACs counter and the CLI need the same facts about a model:
the channels, strides and groups of every convolution and the feature size each runs at.
:func:`model_shape` reads them off a model's modules through its family adapter
(:mod:`.family`), so they are never written down twice; a block's MACs formula is
:meth:`BlockShape.dynamic_macs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, Union

import torch
from torch import nn

from ..dynamic.geometry import grid_size
from ..dynamic.maskers import ChannelMasker, SpatialMasker
from ..dynamic.spec import StageSpec
from ..errors import UsageError
from .family import BlockLayout, family_of
from .registry import create_meta_model

InputSize = Union[int, tuple[int, int], str]
Number = TypeVar("Number", float, torch.Tensor)


def parse_input_size(size: InputSize) -> tuple[int, int]:
    """Accept ``224``, ``(427, 640)`` or ``"427x640"`` and return ``(height, width)``."""
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise UsageError(f"input size: expected N or HxW with positive integers, got {size!r}") from None
    elif isinstance(size, int) and not isinstance(size, bool):
        dims = (size,)
    elif isinstance(size, (tuple, list)):
        dims = tuple(size)
    else:
        raise UsageError(f"input size: expected N, (H, W) or 'HxW', got {size!r}")
    if len(dims) == 1:
        dims = (dims[0], dims[0])
    if len(dims) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UsageError(f"input size: expected N or HxW with positive integers, got {size!r}")
    return dims  # type: ignore[return-value]


def conv_output_hw(hw: tuple[int, int], kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Spatial size after a square convolution or pooling window."""
    return tuple((d + 2 * padding - kernel) // stride + 1 for d in hw)  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvShape:
    """One convolution (or fully connected layer, as a 1×1 conv on a 1×1 map)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        per_pixel = self.in_channels // self.groups * self.kernel * self.kernel * self.out_channels
        return per_pixel * self.out_hw[0] * self.out_hw[1]


@dataclass(frozen=True)
class PoolShape:
    """A pooling window (the ResNet stem's max pool)."""

    name: str
    channels: int
    kernel: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


@dataclass(frozen=True)
class BlockShape:
    """A residual bottleneck block: 1×1 → 3×3 (stride, groups) [→ SE] → 1×1, plus shortcut.

    ``masker_layers`` / ``masker_reduction`` describe the channel masker a dynamic block of this
    shape carries (see :meth:`ChannelMasker.layer_sizes`).
    """

    name: str
    stage: int
    in_channels: int
    width: int
    out_channels: int
    stride: int
    groups: int
    se_channels: int
    has_projection: bool
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    spec: StageSpec = field(default_factory=StageSpec)
    masker_layers: int = 2
    masker_reduction: int = 16

    @property
    def conv1(self) -> ConvShape:
        return ConvShape(f"{self.name}.conv1", self.in_channels, self.width, 1, 1, 1, self.in_hw, self.in_hw)

    @property
    def conv2(self) -> ConvShape:
        return ConvShape(
            f"{self.name}.conv2", self.width, self.width, 3, self.stride, self.groups, self.in_hw, self.out_hw
        )

    @property
    def conv3(self) -> ConvShape:
        return ConvShape(f"{self.name}.conv3", self.width, self.out_channels, 1, 1, 1, self.out_hw, self.out_hw)

    @property
    def projection(self) -> ConvShape | None:
        if not self.has_projection:
            return None
        return ConvShape(
            f"{self.name}.projection", self.in_channels, self.out_channels, 1, self.stride, 1, self.in_hw, self.out_hw
        )

    @property
    def se_macs(self) -> int:
        """MACs of the squeeze-excitation's two 1×1 convs (on the pooled vector)."""
        return 2 * self.width * self.se_channels

    @property
    def dense_macs(self) -> int:
        """MACs of the static block per image (convs, SE and projection; no masker)."""
        total = self.conv1.macs + self.conv2.macs + self.conv3.macs + self.se_macs
        if self.projection is not None:
            total += self.projection.macs
        return total

    @property
    def group_width(self) -> int:
        """Channels per conv group of conv2 (the width for a dense conv2)."""
        return self.width // self.groups

    @property
    def channel_groups(self) -> int:
        """Decisions of the channel masker: the width in groups of ``G`` channels."""
        return self.width // self.spec.channel_granularity

    @property
    def spatial_grid(self) -> tuple[int, int]:
        """Cells of the spatial masker (one for a whole-block gate)."""
        return (1, 1) if self.spec.mode == "layer" else grid_size(self.out_hw, self.spec.spatial_granularity)

    def channel_masker_sizes(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` features of each linear layer of the channel masker."""
        return ChannelMasker.layer_sizes(self.in_channels, self.channel_groups, self.masker_layers, self.masker_reduction)

    def masker_macs(self) -> int:
        """MACs of the block's maskers per image (0 for a static block)."""
        total = 0
        if self.spec.has_spatial:
            gh, gw = self.spatial_grid
            total += SpatialMasker.conv_macs(self.in_channels, (gh, gw))
        if self.spec.has_channel:
            total += sum(i * o for i, o in self.channel_masker_sizes())
        return total

    def dynamic_macs(self, conv1: Number, conv2: Number, conv3: Number, channel: Number, se_active: Number) -> Number:
        """Dynamic MACs per image at these densities (floats, or per-sample tensors), maskers included.

        ``channel`` scales conv1's outputs, conv2's inputs and outputs and conv3's inputs. A
        grouped conv2 never has a channel group split across conv groups, so skipping a channel
        group removes whole conv groups and conv2 scales once, not squared. ``se_active`` (0 or 1)
        says whether the squeeze-excitation runs at all: it is skipped with the block when no
        position is computed. The projection shortcut always runs.
        """
        conv2_channels = channel * channel if self.groups == 1 else channel
        total = (
            self.conv1.macs * channel * conv1
            + self.conv2.macs * conv2_channels * conv2
            + self.conv3.macs * channel * conv3
            + self.se_macs * channel * se_active
            + self.masker_macs()
        )
        if self.projection is not None:
            total = total + self.projection.macs
        return total


@dataclass(frozen=True)
class ModelShape:
    """Everything about a backbone's static structure at one input size."""

    name: str
    family: str
    input_hw: tuple[int, int]
    stem: tuple[ConvShape, ...]
    stem_pool: PoolShape | None
    blocks: tuple[BlockShape, ...]
    head: ConvShape

    @property
    def dense_macs(self) -> int:
        """MACs of the whole static model per image (what ``torch.utils.flop_counter`` ÷ 2 counts)."""
        return sum(c.macs for c in self.stem) + sum(b.dense_macs for b in self.blocks) + self.head.macs

    def stage_blocks(self, stage: int) -> tuple[BlockShape, ...]:
        return tuple(b for b in self.blocks if b.stage == stage)


def model_shape(model: Union[nn.Module, str], input_size: InputSize = 224, **model_kwargs) -> ModelShape:
    """Describe ``model`` (a module, or a model name for :func:`laudnet.create_model`) at ``input_size``.

    Works for laudnet's models and the torchvision models they mirror (see :mod:`.family`).
    A name is built on the meta device, so no weights are allocated.
    """
    if isinstance(model, str):
        model = create_meta_model(model, **model_kwargs)
    return family_of(model).shape(model, parse_input_size(input_size))


def bottleneck_model_shape(model: nn.Module, hw: tuple[int, int]) -> ModelShape:
    """The shape of a model whose family has a conv stem, residual bottlenecks and a linear head."""
    family = family_of(model)
    stem = family.stem(model)
    stem_shape = _conv_shape(stem.name, stem.conv, hw)
    cur, stem_pool = stem_shape.out_hw, None
    if stem.pool is not None:
        pool = stem.pool
        cur = conv_output_hw(stem_shape.out_hw, pool.kernel_size, pool.stride, pool.padding)
        stem_pool = PoolShape("maxpool", stem_shape.out_channels, pool.kernel_size, pool.stride, stem_shape.out_hw, cur)
    spec = getattr(model, "dynamic_spec", None)
    blocks = []
    for name, stage, block in family.block_names(model):
        shape = block_shape(family.block(block), name, stage, cur, spec.stages[stage] if spec else StageSpec(),
                            getattr(block, "masker_options", (2, 16)))
        blocks.append(shape)
        cur = shape.out_hw
    fc = family.head(model)
    head = ConvShape("fc", fc.in_features, fc.out_features, 1, 1, 1, (1, 1), (1, 1))
    return ModelShape(getattr(model, "name", type(model).__name__), family.name, hw, (stem_shape,), stem_pool,
                      tuple(blocks), head)


def _conv_shape(name: str, conv: nn.Conv2d, in_hw: tuple[int, int]) -> ConvShape:
    out_hw = conv_output_hw(in_hw, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    return ConvShape(
        name, conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.groups, in_hw, out_hw
    )


def block_shape(
    layout: BlockLayout, name: str, stage: int, in_hw: tuple[int, int], spec: StageSpec,
    masker_options: tuple[int, int] = (2, 16),
) -> BlockShape:
    """The :class:`BlockShape` of a block laid out as ``layout`` on an input of size ``in_hw``."""
    a, b, c = layout.a.conv, layout.b.conv, layout.c.conv
    return BlockShape(
        name=name,
        stage=stage,
        in_channels=a.in_channels,
        width=a.out_channels,
        out_channels=c.out_channels,
        stride=b.stride[0],
        groups=b.groups,
        se_channels=layout.se.fc1.out_channels if layout.se is not None else 0,
        has_projection=layout.projection is not None,
        in_hw=tuple(in_hw),
        out_hw=conv_output_hw(tuple(in_hw), 3, b.stride[0], b.padding[0]),
        spec=spec,
        masker_layers=masker_options[0],
        masker_reduction=masker_options[1],
    )
