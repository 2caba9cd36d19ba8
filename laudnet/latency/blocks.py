"""Latency of one residual block in each dynamic mode, composed from operator latencies.

* ``static``: conv1, conv2 (stride, groups), [SE], conv3, residual add.
* ``spatial``: spatial masker with conv1 (fused or not), conv2 and conv3 on the active
  patches, [SE pooling the active patches], scatter-add fused with the residual.
* ``channel``: conv1 computing the kept channels, channel masker, conv2 and conv3 on the
  kept channels (paying the imbalance across tiles), [SE], scatter-add of the output.
* ``both``: the spatial block on the kept channels, plus the channel masker.
* ``layer``: the gate is always paid, the static residual branch runs at the block's
  activation rate.

The projection shortcut, where a block has one, always runs.

A calibrated profile (``hw.calibrated``) prices instead what the sparse engine runs on that
device (:mod:`.engine`): the same block, decomposed as :mod:`laudnet.sparse.plan` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dynamic.spec import MODES, StageSpec
from ..models.structure import BlockShape
from . import engine
from . import operators as op
from .hardware import Hardware


@dataclass(frozen=True)
class BlockDensity:
    """Fractions of a block's work that run: spatial positions of each conv, kept channels.

    In ``layer`` mode ``conv1`` is the rate at which the block runs. ``conv1_measured`` is false
    when ``conv1`` merely repeats the gate density (:meth:`uniform`, the paper's convention); a
    calibrated profile then uses the expected dilation of the cells instead.
    """

    conv1: float = 1.0
    conv2: float = 1.0
    conv3: float = 1.0
    channel: float = 1.0
    conv1_measured: bool = True

    def __post_init__(self) -> None:
        for name in ("conv1", "conv2", "conv3", "channel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} density must be a number in [0, 1], got {value!r}")

    @classmethod
    def uniform(cls, mode: str, density: float) -> "BlockDensity":
        """Every gate of a block in ``mode`` at ``density`` (other fractions stay 1)."""
        if mode == "static":
            return cls()
        spatial = density if mode in ("spatial", "layer", "both") else 1.0
        channel = density if mode in ("channel", "both") else 1.0
        return cls(spatial, spatial, spatial, channel, conv1_measured=False)


@dataclass(frozen=True)
class BlockLatency:
    """Predicted latency of one block, in ms per batch, with its operators' shares."""

    name: str
    stage: int
    stride: int
    mode: str
    spatial_granularity: int
    channel_granularity: int
    density: BlockDensity
    ops_ms: dict[str, float] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.ops_ms.values())

    def residual_ms(self, reference_compatible: bool = False) -> float:
        """What the block adds to the residual-stage total; the paper's evaluation script
        leaves out stride-1 projection shortcuts (``reference_compatible``)."""
        skipped = reference_compatible and self.stride == 1
        return self.total_ms - (self.ops_ms.get("projection", 0.0) if skipped else 0.0)


def block_latency(hw: Hardware, block: BlockShape, spec: StageSpec, density: BlockDensity) -> BlockLatency:
    """Predict ``block`` run as ``spec`` says with the given densities on ``hw``."""
    if spec.mode not in MODES:
        raise ValueError(f"unknown mode {spec.mode!r}; accepted modes are {', '.join(MODES)}")
    if spec.has_channel and not 1 <= spec.channel_granularity <= block.width:
        raise ValueError(
            f"{block.name}: channel granularity {spec.channel_granularity} must be between 1 and the "
            f"block width {block.width}"
        )
    if hw.calibrated:
        seconds = engine.expected_block_seconds(hw, block, spec, density)
    else:
        seconds = _COMPOSERS[spec.mode](hw, block, spec, density)
        if block.has_projection:
            seconds["projection"] = op.conv(hw, block.in_channels, block.out_channels, block.out_hw, 1, block.stride)
    return BlockLatency(
        name=block.name,
        stage=block.stage,
        stride=block.stride,
        mode=spec.mode,
        spatial_granularity=spec.spatial_granularity,
        channel_granularity=spec.channel_granularity,
        density=density,
        ops_ms={name: 1e3 * value for name, value in seconds.items()},
    )


def _static(hw: Hardware, b: BlockShape, spec: StageSpec, d: BlockDensity) -> dict[str, float]:
    ops = {
        "conv1": op.conv(hw, b.in_channels, b.width, b.in_hw, 1),
        "conv2": op.conv(hw, b.width, b.width, b.out_hw, 3, b.stride, b.groups),
        "conv3": op.conv(hw, b.width, b.out_channels, b.out_hw, 1),
        "residual_add": op.add(hw, b.out_channels, b.out_hw),
    }
    if b.se_channels:
        ops["se"] = op.squeeze_excitation(hw, b.width, b.out_hw, b.se_channels)
    return ops


def _spatial(hw: Hardware, b: BlockShape, spec: StageSpec, d: BlockDensity) -> dict[str, float]:
    s, g = spec.spatial_granularity, spec.channel_granularity
    ops = {
        "masker_conv1": op.spatial_masker_conv1(hw, b.in_channels, b.width, b.in_hw, s, d.conv1, d.channel, g),
        "conv2": op.patch_conv(
            hw, b.width, b.width, b.out_hw, 3, b.stride, b.groups, s, d.conv2, False, d.channel, d.channel, g
        ),
        "conv3": op.patch_conv(hw, b.width, b.out_channels, b.out_hw, 1, 1, 1, s, d.conv3, True, d.channel, 1.0, g),
        "scatter_add": op.scatter_add(hw, b.out_channels, b.out_hw, s, d.conv3),
    }
    if b.se_channels:
        ops["se"] = op.dynamic_squeeze_excitation(hw, b.width, b.out_hw, b.se_channels, s, d.conv1)
    return ops


def _channel(hw: Hardware, b: BlockShape, spec: StageSpec, d: BlockDensity) -> dict[str, float]:
    g = spec.channel_granularity
    ops = {
        "conv1": op.conv(hw, b.in_channels, b.width, b.in_hw, 1, out_density=d.channel, channel_group=g),
        "channel_masker": op.channel_masker(hw, b.in_channels, b.in_hw, g),
        "conv2": op.conv(
            hw, b.width, b.width, b.out_hw, 3, b.stride, b.groups, in_density=d.channel, out_density=d.channel,
            channel_group=g,
        ),
        "conv3": op.conv(hw, b.width, b.out_channels, b.out_hw, 1, in_density=d.channel, channel_group=g),
        "scatter_add": op.scatter_add(hw, b.out_channels, b.out_hw, 1, 1.0),
    }
    if b.se_channels:
        ops["se"] = op.dynamic_squeeze_excitation(hw, b.width, b.out_hw, b.se_channels, 1, 1.0)
    return ops


def _both(hw: Hardware, b: BlockShape, spec: StageSpec, d: BlockDensity) -> dict[str, float]:
    ops = _spatial(hw, b, spec, d)
    ops["channel_masker"] = op.channel_masker(hw, b.in_channels, b.in_hw, spec.channel_granularity)
    return ops


def _layer(hw: Hardware, b: BlockShape, spec: StageSpec, d: BlockDensity) -> dict[str, float]:
    branch = _static(hw, b, spec, d)
    return {"gate": op.layer_gate(hw, b.in_channels, b.width, b.in_hw)} | {
        name: seconds * d.conv1 for name, seconds in branch.items()
    }


_COMPOSERS = {"static": _static, "spatial": _spatial, "channel": _channel, "both": _both, "layer": _layer}
