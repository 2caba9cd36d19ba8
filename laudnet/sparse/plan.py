"""What the sparse engine runs for a block, priced: its operations for a given amount of work.

The engine's block and stem/head programs (:mod:`.bottleneck`, :mod:`.executor`) are written in
the primitives of :mod:`.kernels`; :func:`block_ops`, :func:`stem_ops` and :func:`head_ops` run
them on sizes only (:class:`~.kernels.ShapeKernels`) and return the kernels they would run, as
:class:`~.kernels.EngineOp` s. The latency predictor prices a calibrated device from these lists,
so they follow the engine by construction.

How much of a block runs is a :class:`BlockWork`; its data-dependent decisions (which samples
run, how many positions and channels, how many distinct channel masks a batch holds) become the
:class:`~.kernels.Scenario` the program is priced in. Samples with channel masks are priced as if
each had its own mask; a block whose branch runs for a fraction of its samples (layer skipping)
is priced as the mix of the two nearest whole numbers of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..dynamic.spec import StageSpec
from ..models.blocks import BlockMasks
from ..models.structure import BlockShape, ModelShape
from .bottleneck import BottleneckProgram, weight_shapes
from .executor import StemHeadProgram
from .kernels import CONV_KINDS, OP_KINDS, EngineOp, Scenario, Shape, ShapeKernels, Traffic, conv_kind

__all__ = [
    "CONV_KINDS", "OP_KINDS", "BlockWork", "EngineOp", "Traffic", "block_ops", "conv_kind", "expected_conv1_density",
    "expected_work", "full_work", "head_ops", "stem_ops", "work_of_masks",
]


@dataclass(frozen=True)
class BlockWork:
    """How much of a block runs in one call (summed over the batch).

    ``branch_rate``: fraction of samples whose residual branch runs (layer skipping; else 1).
    ``conv1_rows`` / ``conv3_rows``: input / output positions conv1 / conv2-conv3 compute.
    ``channels``: bottleneck channels kept (the block width when all are).
    """

    batch: int
    branch_rate: float
    conv1_rows: int
    conv3_rows: int
    channels: int


def full_work(block: BlockShape, batch: int) -> BlockWork:
    """Every position and channel of ``block`` computes."""
    return BlockWork(
        batch, 1.0, batch * block.in_hw[0] * block.in_hw[1], batch * block.out_hw[0] * block.out_hw[1], block.width
    )


def work_of_masks(block: BlockShape, masks: BlockMasks, batch: int) -> BlockWork:
    """The work the engine does for ``masks`` computed on a batch of ``batch`` inputs."""
    work = full_work(block, batch)
    rate, conv1_rows, conv3_rows = 1.0, work.conv1_rows, work.conv3_rows
    if masks.conv3 is not None:
        if masks.conv3.shape[-2:] == (1, 1):
            rate = float(masks.conv3.mean())
        else:
            conv1_rows, conv3_rows = int(masks.conv1.sum()), int(masks.conv3.sum())
    channels = block.width
    if masks.channel is not None:
        channels = round(float(masks.channel.sum()) / batch)
    return BlockWork(batch, rate, conv1_rows, conv3_rows, channels)


def expected_work(
    block: BlockShape, spec: StageSpec, batch: int, *, cells: float, channel: float = 1.0,
    conv1: float | None = None,
) -> BlockWork:
    """The work, in expectation, when a fraction ``cells`` of spatial cells (of runs, for layer
    skipping) and ``channel`` of channel groups are active.

    ``conv1`` is the fraction of input positions conv1 computes when it is known (measured);
    otherwise it is the expected 3×3 dilation of independently active cells.
    """
    work = full_work(block, batch)
    rate, conv1_rows, conv3_rows = 1.0, work.conv1_rows, work.conv3_rows
    if spec.mode == "layer":
        rate = cells
    elif spec.has_spatial:
        conv3_rows = round(cells * work.conv3_rows)
        fraction = conv1 if conv1 is not None else expected_conv1_density(block, spec.spatial_granularity, cells)
        conv1_rows = round(fraction * work.conv1_rows)
    channels = block.width
    if spec.has_channel:
        group = spec.channel_granularity
        channels = round(channel * (block.width // group)) * group
    return BlockWork(batch, rate, conv1_rows, conv3_rows, channels)


def expected_conv1_density(block: BlockShape, granularity: int, cells: float) -> float:
    """Expected fraction of input positions that conv2's 3×3 windows read when every cell of
    ``granularity`` × ``granularity`` output pixels is active independently with probability ``cells``."""
    if cells <= 0.0 or cells >= 1.0:
        return float(cells > 0.0)
    rows = _cells_touched(block.in_hw[0], block.out_hw[0], block.stride, granularity)
    cols = _cells_touched(block.in_hw[1], block.out_hw[1], block.stride, granularity)
    return float(np.mean(1.0 - (1.0 - cells) ** np.outer(rows, cols)))


def _cells_touched(in_size: int, out_size: int, stride: int, granularity: int) -> np.ndarray:
    """Per input index along one axis: how many cells hold an output whose window reads it."""
    outputs = np.arange(out_size)
    counts = [len(np.unique(outputs[np.abs(outputs * stride - y) <= 1] // granularity)) for y in range(in_size)]
    return np.array(counts, dtype=np.float64)


def block_ops(block: BlockShape, spec: StageSpec, work: BlockWork) -> tuple[EngineOp, ...]:
    """The operations the engine runs for ``block``, run as ``spec`` says, doing ``work``."""
    return _block_ops(replace(block, spec=spec), work)


@lru_cache(maxsize=1 << 14)
def _block_ops(block: BlockShape, work: BlockWork) -> tuple[EngineOp, ...]:
    program = BottleneckProgram(block, weight_shapes(block))
    ops: list[EngineOp] = []
    for scenario, weight in _scenarios(block, work):
        kernels = ShapeKernels(scenario)
        program.run(kernels, Shape((work.batch, block.in_channels, *block.in_hw)))
        ops += [op.times(weight) if weight != 1 else op for op in kernels.ops]
    return tuple(ops)


def _scenarios(block: BlockShape, work: BlockWork) -> list[tuple[Scenario, float]]:
    """The data-dependent answers ``work`` stands for, and the weight of each."""
    spec, batch = block.spec, work.batch
    channel_groups = work.channels // spec.channel_granularity if spec.has_channel else 0
    distinct = batch if spec.has_channel and work.channels < block.width else 1
    counts = (("conv3", work.conv3_rows), ("conv1", work.conv1_rows), ("channels", batch * channel_groups))
    if not spec.has_spatial or block.spatial_grid != (1, 1):
        return [(Scenario(counts, (), distinct), 1.0)]
    # One decision per sample (layer skipping, or a single spatial cell): some samples run.
    per_image = block.out_hw[0] * block.out_hw[1]
    running = work.branch_rate * batch if spec.mode == "layer" else work.conv3_rows / per_image
    fewer = math.floor(running)
    mix = [(fewer, 1.0 - (running - fewer)), (fewer + 1, running - fewer)]
    return [
        (Scenario(counts + (("gate", on),), ("gate",) if on == batch else (), distinct), weight)
        for on, weight in mix if weight > 0 and on <= batch
    ]


def stem_ops(model: ModelShape, batch: int) -> tuple[EngineOp, ...]:
    """The engine's stem: the input made channels-last, the folded conv and its ReLU, [the max pool]."""
    kernels = ShapeKernels()
    StemHeadProgram.of_shape(model).stem(kernels, Shape((batch, model.stem[0].in_channels, *model.input_hw)))
    return tuple(kernels.ops)


def head_ops(model: ModelShape, batch: int) -> tuple[EngineOp, ...]:
    """The engine's head: global average pooling and the classifier."""
    last = model.blocks[-1]
    kernels = ShapeKernels()
    StemHeadProgram.of_shape(model).head(kernels, Shape((batch, last.out_channels, *last.out_hw)))
    return tuple(kernels.ops)
