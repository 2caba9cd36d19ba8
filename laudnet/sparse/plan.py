"""What the sparse engine runs for a block: its primitive operations and their sizes.

:class:`~laudnet.sparse.engine.SparseBlock` executes a block as a short sequence of primitive
operations: matrix products on channels-last rows (every 1×1 conv, conv2 on gathered windows),
dense convolutions, row gathers and scatters, element-wise passes, reductions and the maskers.
:func:`block_ops` lists them for a block's shape, its stage spec and how much of it runs
(:class:`BlockWork`), in the engine's order and with the engine's sizes; :func:`stem_ops` and
:func:`head_ops` do the same for the rest of the model. This is the one description of the
engine's execution plan: the latency predictor prices a calibrated device from it, and the tests
check it against the operations the engine actually dispatches.

Sizes (``EngineOp.dims``) per kind:

* ``matmul``: ``(m, k, n)``, an ``(m, k) @ (k, n)`` product plus bias;
* ``grouped_matmul``: ``(groups, m, k, n)``, one such product per conv group (batched);
* ``conv``: ``(batch, in_channels, out_channels, in_h, in_w, kernel, stride, groups)``, padding
  ``kernel // 2``, channels-last, ``groups`` 1;
* ``grouped_conv``: the same with ``groups`` > 1 (RegNetY's conv2: other kernels, other speed);
* ``gather``: ``(rows, width)``, ``rows`` slices of ``width`` values of an activation selected by index;
* ``slice``: ``(rows, width)``, the same on a parameter (channel-sliced weights and biases);
* ``scatter``: ``(rows, width)``, rows copied or added into a larger buffer by index;
* ``elementwise``: ``(elements,)``, one pass (activation, bias, copy, zeros, index arithmetic);
* ``reduce``: ``(elements_in, elements_out)``, a mean;
* ``max_pool``: ``(batch, channels, in_h, in_w)``, the 3×3 / 2 stem pool;
* ``spatial_masker``: ``(batch, in_channels, in_h, in_w, grid_h, grid_w, stride)``, the masker,
  its gate and the pixel masks derived from it (``grid`` 1×1: a whole-block gate);
* ``channel_masker``: ``(batch, in_channels, in_h, in_w, hidden, groups)``, pooling, MLP, gate.

``count`` is how many times the operation runs per call, in expectation: a block whose branch
runs with probability ``p`` (layer skipping) lists its branch with ``count = p``. Plans are exact
at batch 1; with larger batches, samples with different channel masks or gates are priced as if
each ran alone (the engine may share some of their work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..dynamic.geometry import grid_size
from ..dynamic.spec import StageSpec
from ..models.blocks import BlockMasks
from ..models.structure import BlockShape, ModelShape, conv_output_hw

OP_KINDS: tuple[str, ...] = (
    "matmul", "grouped_matmul", "conv", "grouped_conv", "gather", "slice", "scatter", "elementwise", "reduce",
    "max_pool", "spatial_masker", "channel_masker",
)
CONV_KINDS: tuple[str, ...] = ("conv", "grouped_conv")


def conv_kind(groups: int) -> str:
    """Dense and grouped convolutions run different kernels, so they are priced apart."""
    return "grouped_conv" if groups > 1 else "conv"


@dataclass(frozen=True)
class EngineOp:
    """One primitive operation of the engine: its kind, the block part it serves, its sizes."""

    kind: str
    role: str
    dims: tuple[int, ...]
    count: float = 1.0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one execution (0 for data movement)."""
        if self.kind == "matmul":
            m, k, n = self.dims
            return m * k * n
        if self.kind == "grouped_matmul":
            g, m, k, n = self.dims
            return g * m * k * n
        if self.kind in CONV_KINDS:
            b, cin, cout, h, w, kernel, stride, groups = self.dims
            oh, ow = conv_output_hw((h, w), kernel, stride, kernel // 2)
            return b * oh * ow * cout * (cin // groups) * kernel * kernel
        return 0

    @property
    def traffic(self) -> "Traffic":
        """The data one execution moves."""
        kind, d = self.kind, self.dims
        if kind == "matmul":
            m, k, n = d
            return Traffic(m * k, k * n, m * n)
        if kind == "grouped_matmul":
            g, m, k, n = d
            return Traffic(g * m * k, g * k * n, g * m * n)
        if kind in CONV_KINDS:
            b, cin, cout, h, w, kernel, stride, groups = d
            oh, ow = conv_output_hw((h, w), kernel, stride, kernel // 2)
            return Traffic(b * cin * h * w, cout * (cin // groups) * kernel * kernel, b * cout * oh * ow)
        if kind in ("gather", "scatter"):
            rows, width = d
            return Traffic(rows * width, 0, rows * width, rows)
        if kind == "slice":
            rows, width = d
            return Traffic(0, rows * width, rows * width, rows)
        if kind == "elementwise":
            return Traffic(d[0], 0, d[0])
        if kind == "reduce":
            return Traffic(d[0], 0, d[1])
        if kind == "max_pool":
            b, c, h, w = d
            oh, ow = conv_output_hw((h, w), 3, 2, 1)
            return Traffic(b * c * h * w, 0, b * c * oh * ow)
        if kind == "spatial_masker":
            b, cin, h, w = d[:4]
            return Traffic(b * cin * h * w, 2 * cin, b * h * w)
        if kind == "channel_masker":
            b, cin, h, w, hidden, groups = d
            return Traffic(b * cin * h * w, cin * hidden + hidden * 2 * groups, b * groups)
        raise ValueError(f"unknown operation kind {kind!r}; known kinds are {', '.join(OP_KINDS)}")

    def times(self, count: float) -> "EngineOp":
        return replace(self, count=self.count * count)


@dataclass(frozen=True)
class Traffic:
    """Values one operation reads (``inputs``: activations, ``weights``: parameters), values it
    writes (``outputs``) and rows it addresses by index (``rows``)."""

    inputs: int
    weights: int
    outputs: int
    rows: int = 0


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
    plan = _Planner(block, spec.channel_granularity if spec.has_channel else block.width)
    ops = plan.maskers(spec, work.batch)
    if spec.mode == "layer":
        return tuple(ops + plan.layer(work))
    if spec.has_channel and work.batch > 1:
        return tuple(ops + plan.per_sample_channels(spec, work))
    return tuple(ops + plan.branch(spec, work))


class _Planner:
    """The engine's code paths for one block shape, as lists of operations."""

    def __init__(self, block: BlockShape, channel_group: int) -> None:
        self.block = block
        self.group = channel_group
        self.group_width = block.width // block.groups

    def out_rows(self, batch: int) -> int:
        return batch * self.block.out_hw[0] * self.block.out_hw[1]

    def in_rows(self, batch: int) -> int:
        return batch * self.block.in_hw[0] * self.block.in_hw[1]

    # -- decisions ------------------------------------------------------------------------------
    def maskers(self, spec: StageSpec, batch: int) -> list[EngineOp]:
        """``DynamicBottleneck.compute_masks``, and the engine's list of active positions."""
        b, (h, w) = self.block, self.block.in_hw
        ops = []
        if spec.has_spatial:
            grid = (1, 1) if spec.mode == "layer" else grid_size(b.out_hw, spec.spatial_granularity)
            ops.append(EngineOp("spatial_masker", "masker", (batch, b.in_channels, h, w, *grid, b.stride)))
        if spec.has_channel:
            groups = b.width // spec.channel_granularity
            ops.append(EngineOp("channel_masker", "masker", (batch, b.in_channels, h, w, max(groups // 16, 16), groups)))
        if spec.has_spatial and spec.mode != "layer":
            if any(size % spec.spatial_granularity for size in b.out_hw):  # cells cropped at the border: a copy
                ops.append(EngineOp("elementwise", "masker", (self.out_rows(batch),)))
            ops.append(EngineOp("elementwise", "masker", (self.out_rows(batch),)))  # nonzero: active positions
        return ops

    def channel_index(self, channels: int) -> list[EngineOp]:
        """``SparseBlock._channels``: channel indices of the active groups, and their conv groups."""
        ops = [EngineOp("elementwise", "masker", (self.block.width // self.group,))]  # nonzero
        if channels == self.block.width:
            return ops
        return ops + [
            EngineOp("elementwise", "masker", (channels // self.group,)),  # groups * G
            EngineOp("elementwise", "masker", (self.group,)),  # arange(G)
            EngineOp("elementwise", "masker", (max(channels, self.group),)),  # sum: channel indices
            EngineOp("elementwise", "masker", (math.ceil(channels / self.group_width),)),  # conv groups
        ]

    # -- paths ----------------------------------------------------------------------------------
    def branch(self, spec: StageSpec, work: BlockWork) -> list[EngineOp]:
        """One batch whose samples share their channels: dense or spatial, then the output ReLU."""
        b = work.batch
        channels = None if work.channels == self.block.width else work.channels
        spatial = spec.has_spatial and work.conv3_rows < self.out_rows(b)
        if spatial and work.conv3_rows == 0:  # nothing to compute: the shortcut only
            return self.shortcut(b) + [self.residual(b)]
        ops = self.channel_index(work.channels) if spec.has_channel else []
        ops += self.shortcut(b)
        if spatial:
            ops += self.spatial(work, channels)
        else:
            ops += self.dense_branch(b, channels, add_bias=not self.block.has_projection)
        return ops + [self.residual(b)]

    def layer(self, work: BlockWork) -> list[EngineOp]:
        """Layer skipping: the gate's decision, the shortcut, the branch at its rate, the ReLU."""
        b = work.batch
        ops = [EngineOp("elementwise", "masker", (b,)), EngineOp("elementwise", "masker", (b,)),
               EngineOp("elementwise", "masker", (1,))]  # gate > 0, all(), item
        if b == 1:  # all on: the dense block; all off: the shortcut only
            ops.append(EngineOp("elementwise", "masker", (1,)).times(1.0 - work.branch_rate))  # nonzero
            branch = self.dense_branch(1, None, add_bias=not self.block.has_projection)
            return ops + self.shortcut(1) + [op.times(work.branch_rate) for op in branch] + [self.residual(1)]
        ops.append(EngineOp("elementwise", "masker", (b,)))  # nonzero: the samples that run
        per_sample = [EngineOp("elementwise", "masker", (1,))] + self.dense_branch(1, None, add_bias=True)
        return ops + self.shortcut(b) + [op.times(work.branch_rate * b) for op in per_sample] + [self.residual(b)]

    def per_sample_channels(self, spec: StageSpec, work: BlockWork) -> list[EngineOp]:
        """Channel masks in a batch: priced as if every sample had its own mask and ran alone."""
        b = work.batch
        single = BlockWork(1, 1.0, work.conv1_rows // b, work.conv3_rows // b, work.channels)
        channels = None if work.channels == self.block.width else work.channels
        sample = self.channel_index(work.channels) + [EngineOp("elementwise", "masker", (1,))]
        if spec.has_spatial and single.conv3_rows < self.out_rows(1):
            if single.conv3_rows > 0:
                sample += self.spatial(single, channels)
        else:
            sample += self.dense_branch(1, channels, add_bias=True)
        return self.shortcut(b) + [op.times(b) for op in sample] + [self.residual(b)]

    def residual(self, batch: int) -> EngineOp:
        return EngineOp("elementwise", "residual", (self.out_rows(batch) * self.block.out_channels,))

    def shortcut(self, batch: int) -> list[EngineOp]:
        """``SparseBlock._project``: the projection, a product on the (strided) rows."""
        b = self.block
        if not b.has_projection:
            return []
        rows = self.out_rows(batch)
        ops = [EngineOp("elementwise", "projection", (rows * b.in_channels,))] if b.stride > 1 else []
        return ops + [EngineOp("matmul", "projection", (rows, b.in_channels, b.out_channels))]

    # -- every position -------------------------------------------------------------------------
    def dense_branch(self, batch: int, channels: int | None, add_bias: bool) -> list[EngineOp]:
        """``SparseBlock._add_dense``: conv1, conv2, [SE], conv3 everywhere, added into the output."""
        b = self.block
        rows = self.out_rows(batch)
        ops = self.dense_hidden(batch, channels) if channels != 0 else []
        if add_bias:
            ops.append(EngineOp("elementwise", "conv3", (rows * b.out_channels,)))
        if channels != 0:
            ops += self.conv3(rows, channels)
        return ops

    def dense_hidden(self, batch: int, channels: int | None) -> list[EngineOp]:
        b = self.block
        c = b.width if channels is None else channels
        ops = self.conv1(self.in_rows(batch), channels)
        groups = b.groups
        if channels is not None:
            ops += self.conv2_weight(channels)
            groups = channels // self.group_width if b.groups > 1 else 1
        ops += [
            EngineOp(conv_kind(groups), "conv2", (batch, c, c, *b.in_hw, 3, b.stride, groups)),
            EngineOp("elementwise", "conv2", (self.out_rows(batch) * c,)),
        ]
        if b.se_channels:
            ops.append(EngineOp("reduce", "se", (self.out_rows(batch) * c, batch * c)))
            ops += self.se(batch, channels)
            ops.append(EngineOp("elementwise", "se", (self.out_rows(batch) * c,)))
        return ops

    def conv1(self, rows: int, channels: int | None) -> list[EngineOp]:
        b = self.block
        c = b.width if channels is None else channels
        ops = [] if channels is None else [
            EngineOp("slice", "conv1", (c, b.in_channels)), EngineOp("slice", "conv1", (c, 1))
        ]
        return ops + [EngineOp("matmul", "conv1", (rows, b.in_channels, c)), EngineOp("elementwise", "conv1", (rows * c,))]

    def conv2_weight(self, channels: int) -> list[EngineOp]:
        """``SparseBlock._conv2_weight``: the active outputs' (and inputs') weights, and their bias."""
        if self.block.groups > 1:
            ops = [EngineOp("slice", "conv2", (channels, self.group_width * 9))]
        else:
            pairs = channels * (channels // self.group)
            ops = [
                EngineOp("elementwise", "conv2", (channels,)),
                EngineOp("elementwise", "conv2", (pairs,)),
                EngineOp("slice", "conv2", (pairs, self.group * 9)),
            ]
        return ops + [EngineOp("slice", "conv2", (channels, 1))]

    def conv3(self, rows: int, channels: int | None) -> list[EngineOp]:
        b = self.block
        c = b.width if channels is None else channels
        ops = [] if channels is None else [EngineOp("slice", "conv3", (c, b.out_channels))]
        return ops + [EngineOp("matmul", "conv3", (rows, c, b.out_channels))]

    def se(self, samples: int, channels: int | None) -> list[EngineOp]:
        """``SparseBlock._se_scale``: two products on the pooled vectors, ReLU and sigmoid."""
        b = self.block
        c, s = (b.width if channels is None else channels), b.se_channels
        ops = [] if channels is None else [
            EngineOp("slice", "se", (c, s)), EngineOp("slice", "se", (c, s)), EngineOp("slice", "se", (c, 1))
        ]
        return ops + [
            EngineOp("matmul", "se", (samples, c, s)),
            EngineOp("elementwise", "se", (samples * s,)),
            EngineOp("matmul", "se", (samples, s, c)),
            EngineOp("elementwise", "se", (samples * c,)),
        ]

    # -- active positions -----------------------------------------------------------------------
    def spatial(self, work: BlockWork, channels: int | None) -> list[EngineOp]:
        """``SparseBlock._spatial_branch`` and the scatter-add of its rows into the shortcut."""
        b = self.block
        scatter = EngineOp("scatter", "scatter_add", (work.conv3_rows, b.out_channels))
        if channels == 0:
            return [scatter]
        batch, (h, w) = work.batch, b.in_hw
        c = b.width if channels is None else channels
        n1, n3 = work.conv1_rows, work.conv3_rows
        padded = batch * (h + 2) * (w + 2) * c
        ops = [EngineOp("elementwise", "conv1", (self.in_rows(batch),))]  # nonzero: conv1's positions
        if n1 == self.in_rows(batch):
            ops += self.conv1(n1, channels) + [EngineOp("elementwise", "conv1", (padded,))]  # zero padding
        else:
            ops += [EngineOp("gather", "conv1", (n1, b.in_channels))] + self.conv1(n1, channels) + [
                EngineOp("elementwise", "conv1", (padded,)),  # zero buffer
                EngineOp("gather", "conv1", (n1, 1)),
                EngineOp("scatter", "conv1", (n1, c)),
            ]
        ops += [EngineOp("gather", "conv2", (n3, _TAPS)), EngineOp("gather", "conv2", (_TAPS * n3, c))]
        ops += self.conv2_cols(n3, channels)
        ops.append(EngineOp("elementwise", "conv2", (n3 * c,)))
        if b.se_channels:
            ops += self.se_at(batch, n3, channels)
        return ops + self.conv3(n3, channels) + [scatter]

    def conv2_cols(self, n3: int, channels: int | None) -> list[EngineOp]:
        """``SparseBlock._conv2_cols``: conv2 as one product on the gathered windows (batched if grouped)."""
        b = self.block
        c = b.width if channels is None else channels
        ops = [] if channels is None else [EngineOp("slice", "conv2", (c, 1))]
        if b.groups == 1:
            if channels is not None:
                ops += [EngineOp("slice", "conv2", (_TAPS * c, b.width)), EngineOp("gather", "conv2", (_TAPS * c * c, 1))]
            return ops + [EngineOp("matmul", "conv2", (n3, _TAPS * c, c))]
        gw, groups = self.group_width, c // self.group_width
        if channels is not None:
            ops.append(EngineOp("slice", "conv2", (groups, _TAPS * gw * gw)))
        product = EngineOp("grouped_matmul", "conv2", (groups, n3, _TAPS * gw, gw))
        if groups == 1:  # regrouping the windows and the outputs are views
            return ops + [product]
        ops += [EngineOp("elementwise", "conv2", (n3 * _TAPS * c,)), product]  # windows copied per conv group
        if n3 > 1:  # outputs back to rows: a view for a single row
            ops.append(EngineOp("elementwise", "conv2", (n3 * c,)))
        return ops

    def se_at(self, batch: int, n3: int, channels: int | None) -> list[EngineOp]:
        """``SparseBlock._se_scale_at``: squeeze-excitation pooling each sample's computed rows."""
        c = self.block.width if channels is None else channels
        ops = [EngineOp("elementwise", "se", (n3,))]  # the sample of each row
        if batch == 1:
            ops += [EngineOp("reduce", "se", (n3 * c, c))] + self.se(1, channels)
        else:
            ops += [
                EngineOp("elementwise", "se", (n3,)),  # rows per sample
                EngineOp("elementwise", "se", (batch * c,)),  # sums
                EngineOp("scatter", "se", (n3, c)),
                EngineOp("elementwise", "se", (batch,)),  # samples with rows
                EngineOp("gather", "se", (batch, c)),
                EngineOp("gather", "se", (batch, 1)),
                EngineOp("elementwise", "se", (batch,)),
                EngineOp("elementwise", "se", (batch * c,)),  # mean
                EngineOp("elementwise", "se", (batch * c,)),  # scales
                *self.se(batch, channels),
                EngineOp("scatter", "se", (batch, c)),
                EngineOp("gather", "se", (n3, c)),
            ]
        return ops + [EngineOp("elementwise", "se", (n3 * c,))]


_TAPS = 9  # rows gathered per output position: a 3×3 window


def stem_ops(model: ModelShape, batch: int) -> tuple[EngineOp, ...]:
    """The engine's stem: the input made channels-last, the folded conv and its ReLU, [the max pool]."""
    (conv,) = model.stem
    h, w = conv.in_hw
    ops = [
        EngineOp("elementwise", "stem", (batch * conv.in_channels * h * w,)),
        EngineOp("conv", "stem", (batch, conv.in_channels, conv.out_channels, h, w, conv.kernel, conv.stride, 1)),
        EngineOp("elementwise", "stem", (batch * conv.out_channels * conv.out_hw[0] * conv.out_hw[1],)),
    ]
    if model.stem_pool is not None:
        ops.append(EngineOp("max_pool", "stem", (batch, model.stem_pool.channels, *model.stem_pool.in_hw)))
    return tuple(ops)


def head_ops(model: ModelShape, batch: int) -> tuple[EngineOp, ...]:
    """The engine's head: global average pooling and the classifier."""
    last = model.blocks[-1]
    pixels = last.out_hw[0] * last.out_hw[1]
    return (
        EngineOp("reduce", "head", (batch * last.out_channels * pixels, batch * last.out_channels)),
        EngineOp("matmul", "head", (batch, model.head.in_channels, model.head.out_channels)),
    )
