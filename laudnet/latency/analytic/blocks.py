"""The paper's latency of one residual block in each dynamic mode, composed from operator latencies.

* ``static``: conv1, conv2 (stride, groups), [SE], conv3, residual add.
* ``spatial``: spatial masker with conv1 (fused or not), conv2 and conv3 on the active
  patches, [SE pooling the active patches], scatter-add fused with the residual.
* ``channel``: conv1 computing the kept channels, channel masker, conv2 and conv3 on the
  kept channels (paying the imbalance across tiles), [SE], scatter-add of the output.
* ``both``: the spatial block on the kept channels, plus the channel masker.
* ``layer``: the gate is always paid, the static residual branch runs at the block's
  activation rate.

The projection shortcut, where a block has one, always runs. The stem and the head are the
convolution (and the ResNet stem's max pool), the global pooling and the classifier.
"""

from __future__ import annotations

from ...dynamic.spec import StageSpec
from ...models.structure import BlockShape, ModelShape
from ..hardware import Hardware
from ..interface import BlockDensity
from . import operators as op


def block_seconds(hw: Hardware, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
    """Seconds of ``block`` run as ``spec`` says with the given densities on ``hw``, by part."""
    seconds = _COMPOSERS[spec.mode](hw, block, spec, density)
    if block.has_projection:
        seconds["projection"] = op.conv(hw, block.in_channels, block.out_channels, block.out_hw, 1, block.stride)
    return seconds


def stem_seconds(hw: Hardware, shape: ModelShape) -> float:
    seconds = sum(
        op.conv(hw, c.in_channels, c.out_channels, c.out_hw, c.kernel, c.stride, c.groups) for c in shape.stem
    )
    if shape.stem_pool is not None:
        p = shape.stem_pool
        seconds += op.pool(hw, p.channels, p.in_hw, p.out_hw)
    return seconds


def head_seconds(hw: Hardware, shape: ModelShape) -> float:
    last = shape.blocks[-1]
    return op.pool(hw, last.out_channels, last.out_hw, (1, 1)) + op.fc(hw, shape.head.in_channels,
                                                                        shape.head.out_channels)


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
