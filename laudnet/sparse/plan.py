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
from ..models.structure import BlockShape, ModelShape, conv_output_hw
from .bottleneck import BottleneckProgram, weight_shapes
from .executor import StemHeadProgram
from .kernels import CONV_KINDS, OP_KINDS, EngineOp, Scenario, Shape, ShapeKernels, Traffic, conv_kind

__all__ = [
    "CONV_KINDS", "OP_KINDS", "BlockWork", "EngineOp", "Traffic", "block_calls", "block_ops", "conv_kind",
    "expected_conv1_density", "expected_work", "full_work", "gathers", "head_ops", "on_rows", "stem_ops",
    "work_of_masks",
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


def block_ops(block: BlockShape, spec: StageSpec, work: BlockWork, backend: str = "torch") -> tuple[EngineOp, ...]:
    """The operations the engine of ``backend`` runs for ``block``, run as ``spec`` says, doing ``work``."""
    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"no plan for backend {backend!r}")
    return _block_ops(replace(block, spec=spec), work, backend)


def on_rows(spec: StageSpec, groups: int, grid: tuple[int, int]) -> bool:
    """Whether the engine's ONNX graph (:mod:`.lowering`) runs a block on NHWC rows, gathering positions
    or channels for products on rows: spatial masks finer than the whole map, or channel masks in a
    block with conv groups (one without groups convolves NCHW with its active channels' weights)."""
    if spec.has_channel:
        return spec.has_spatial or groups > 1
    return spec.has_spatial and spec.mode != "layer" and grid != (1, 1)


def gathers(block: BlockShape, spec: StageSpec, work: BlockWork, backend: str = "torch") -> bool:
    """Whether the engine gathers for ``work``: some but not all positions (finer than whole-block
    gates) or channels kept; all kept run the static block, none its shortcut. ONNX Runtime's graph
    gathers only where it runs on rows (:func:`on_rows`)."""
    if backend == "onnxruntime" and not on_rows(spec, block.groups, block.spatial_grid):
        return False
    positions = 0 < work.conv3_rows < full_work(block, work.batch).conv3_rows
    some_positions = spec.has_spatial and block.spatial_grid != (1, 1) and positions
    return some_positions or (spec.has_channel and 0 < work.channels < block.width)


def block_calls(
    block: BlockShape, spec: StageSpec, work: BlockWork, backend: str = "torch",
) -> tuple[tuple[str, float], ...]:
    """The per-call costs a block pays besides its operations: every block's, and a gathering block's
    (the index arithmetic and reshapes around its gathers and scatters)."""
    return (("block", 1.0),) + ((("gathering_block", 1.0),) if gathers(block, spec, work, backend) else ())


def _onnxruntime_ops(ops: tuple[EngineOp, ...], gathering: bool, rows: bool) -> tuple[EngineOp, ...]:
    """The torch program's operations as the ONNX graph runs them: bias, ReLU and residual passes
    fused into the product or convolution before them; without gathers, products as 1×1
    convolutions (ONNX Runtime's blocked direct convolutions; the projection of a block on ``rows``
    stays a product) and no element-wise pass but the maskers' and the SE's, whose channel scaling
    runs unblocked between two reorders. A grouped product on rows (batched ``MatMul``) adds its
    bias and transposes back to rows in passes of their own."""
    kept: list[EngineOp] = []
    scaled = 0  # the size of the activation the SE pools, hence scales
    for previous, op in zip((None,) + ops[:-1], ops):
        if op.kind == "reduce" and op.role == "se":
            scaled = op.dims[0]
        if op.kind == "elementwise":
            fused = previous is not None and previous.kind in PRODUCT_KINDS
            if fused or (not gathering and op.role not in UNFUSED_ROLES):
                continue
            if not gathering and op.role == "se" and op.dims[0] == scaled:
                op = op.times(3)
        convolved = not rows if op.role == "projection" else not gathering
        if op.kind == "matmul" and convolved and op.role not in UNFUSED_ROLES:
            m, k, n = op.dims
            op = replace(op, kind="conv", dims=(1, k, n, m, 1, 1, 1, 1))
        if op.kind in CONV_KINDS and gathering:
            kept.extend(_windows(op))
            continue
        kept.append(op)
        if op.kind == "grouped_matmul":
            g, m, _, n = op.dims
            kept.append(EngineOp("elementwise", op.role, (g * m * n,), 2 * op.count))
    return tuple(kept)


def _windows(conv: EngineOp) -> list[EngineOp]:
    """A convolution over every position as a gathering block's graph runs it: its windows gathered
    from the rows (grouped: from the rows laid out group-major first, a pass over about as many rows
    as there are windows), then a product on them."""
    b, cin, cout, h, w, kernel, stride, groups = conv.dims
    oh, ow = conv_output_hw((h, w), kernel, stride, kernel // 2)
    rows, taps = b * oh * ow, kernel * kernel
    ops = [EngineOp("gather", conv.role, (rows * taps, cin), conv.count)]
    if groups == 1:
        return ops + [EngineOp("matmul", conv.role, (rows, taps * cin, cout), conv.count)]
    product = EngineOp("grouped_matmul", conv.role, (groups, rows, taps * cin // groups, cout // groups), conv.count)
    return ops + [EngineOp("elementwise", conv.role, (rows * cin,), conv.count), product,
                  EngineOp("elementwise", conv.role, (rows * cout,), 2 * conv.count)]


PRODUCT_KINDS: tuple[str, ...] = ("matmul", "grouped_matmul") + CONV_KINDS
# Parts whose element-wise passes and products run as such in every path (pooled vectors, the SE's scaling).
UNFUSED_ROLES: tuple[str, ...] = ("masker", "se")


@lru_cache(maxsize=1 << 14)
def _block_ops(block: BlockShape, work: BlockWork, backend: str) -> tuple[EngineOp, ...]:
    if backend == "onnxruntime":
        spec = block.spec
        return _onnxruntime_ops(_block_ops(block, work, "torch"), gathers(block, spec, work, backend),
                                on_rows(spec, block.groups, block.spatial_grid))
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


def stem_ops(model: ModelShape, batch: int, backend: str = "torch") -> tuple[EngineOp, ...]:
    """The engine's stem: the input made channels-last, the folded conv and its ReLU, [the max pool]
    (ONNX Runtime's blocked conv reads the NCHW images as they are and fuses the ReLU)."""
    kernels = ShapeKernels()
    StemHeadProgram.of_shape(model).stem(kernels, Shape((batch, model.stem[0].in_channels, *model.input_hw)))
    return tuple(kernels.ops) if backend == "torch" else _onnxruntime_ops(tuple(kernels.ops), False, False)


def head_ops(model: ModelShape, batch: int) -> tuple[EngineOp, ...]:
    """The engine's head: global average pooling and the classifier."""
    last = model.blocks[-1]
    kernels = ShapeKernels()
    StemHeadProgram.of_shape(model).head(kernels, Shape((batch, last.out_channels, *last.out_hw)))
    return tuple(kernels.ops)
