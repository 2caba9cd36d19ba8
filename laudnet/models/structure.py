"""Static description of a backbone's layers and feature sizes at a given input size.

The latency predictor, the MACs counter and the CLI need the same facts about a model:
the channels, strides and groups of every convolution and the feature size each runs at.
:func:`model_shape` reads them off a model's modules (laudnet models and the torchvision
ResNet / RegNet they mirror share module names), so they are never written down twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from torch import nn

from ..dynamic.spec import StageSpec

InputSize = Union[int, tuple[int, int], str]


def parse_input_size(size: InputSize) -> tuple[int, int]:
    """Accept ``224``, ``(427, 640)`` or ``"427x640"`` and return ``(height, width)``."""
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"input size: expected N or HxW with positive integers, got {size!r}") from None
    elif isinstance(size, int) and not isinstance(size, bool):
        dims = (size,)
    elif isinstance(size, (tuple, list)):
        dims = tuple(size)
    else:
        raise ValueError(f"input size: expected N, (H, W) or 'HxW', got {size!r}")
    if len(dims) == 1:
        dims = (dims[0], dims[0])
    if len(dims) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"input size: expected N or HxW with positive integers, got {size!r}")
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
    """A residual bottleneck block: 1×1 → 3×3 (stride, groups) [→ SE] → 1×1, plus shortcut."""

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

    Works for laudnet's LAUD-ResNet / LAUD-RegNet and for torchvision's ResNet / RegNet.
    A name is built on the meta device, so no weights are allocated.
    """
    if isinstance(model, str):
        from .registry import create_model

        with torch.device("meta"):
            model = create_model(model, **model_kwargs)
    hw = parse_input_size(input_size)
    name = getattr(model, "name", type(model).__name__)
    if hasattr(model, "layer1") and hasattr(model, "maxpool"):
        return _resnet_shape(model, name, hw)
    if hasattr(model, "trunk_output"):
        return _regnet_shape(model, name, hw)
    raise TypeError(f"model_shape: {type(model).__name__} is neither a ResNet nor a RegNet backbone")


def _conv_shape(name: str, conv: nn.Conv2d, in_hw: tuple[int, int]) -> ConvShape:
    out_hw = conv_output_hw(in_hw, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    return ConvShape(
        name, conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.groups, in_hw, out_hw
    )


def _block_shape(
    name: str, stage: int, conv1: nn.Conv2d, conv2: nn.Conv2d, conv3: nn.Conv2d, se: nn.Module | None,
    has_projection: bool, in_hw: tuple[int, int], spec: StageSpec,
) -> BlockShape:
    out_hw = conv_output_hw(in_hw, 3, conv2.stride[0], conv2.padding[0])
    return BlockShape(
        name=name,
        stage=stage,
        in_channels=conv1.in_channels,
        width=conv1.out_channels,
        out_channels=conv3.out_channels,
        stride=conv2.stride[0],
        groups=conv2.groups,
        se_channels=se.fc1.out_channels if se is not None else 0,
        has_projection=has_projection,
        in_hw=in_hw,
        out_hw=out_hw,
        spec=spec,
    )


def _stage_spec(model: nn.Module, stage: int) -> StageSpec:
    spec = getattr(model, "dynamic_spec", None)
    return spec.stages[stage] if spec is not None else StageSpec()


def _head(model: nn.Module) -> ConvShape:
    fc = model.fc
    return ConvShape("fc", fc.in_features, fc.out_features, 1, 1, 1, (1, 1), (1, 1))


def _resnet_shape(model: nn.Module, name: str, hw: tuple[int, int]) -> ModelShape:
    stem = _conv_shape("conv1", model.conv1, hw)
    pool = model.maxpool
    pool_hw = conv_output_hw(stem.out_hw, pool.kernel_size, pool.stride, pool.padding)
    stem_pool = PoolShape("maxpool", stem.out_channels, pool.kernel_size, pool.stride, stem.out_hw, pool_hw)
    blocks, cur = [], pool_hw
    for stage in range(4):
        for i, block in enumerate(getattr(model, f"layer{stage + 1}")):
            shape = _block_shape(
                f"layer{stage + 1}.{i}", stage, block.conv1, block.conv2, block.conv3, None,
                block.downsample is not None, cur, _stage_spec(model, stage),
            )
            blocks.append(shape)
            cur = shape.out_hw
    return ModelShape(name, "resnet", hw, (stem,), stem_pool, tuple(blocks), _head(model))


def _regnet_shape(model: nn.Module, name: str, hw: tuple[int, int]) -> ModelShape:
    stem = _conv_shape("stem", model.stem[0], hw)
    blocks, cur = [], stem.out_hw
    for stage, (stage_name, stage_module) in enumerate(model.trunk_output.named_children()):
        for block_name, block in stage_module.named_children():
            f = block.f
            shape = _block_shape(
                f"trunk_output.{stage_name}.{block_name}", stage, f.a[0], f.b[0], f.c[0],
                getattr(f, "se", None), block.proj is not None, cur, _stage_spec(model, stage),
            )
            blocks.append(shape)
            cur = shape.out_hw
    return ModelShape(name, "regnet", hw, (stem,), None, tuple(blocks), _head(model))
