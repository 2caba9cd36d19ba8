"""Latency of the sparse engine on a calibrated device: the engine's plan, priced per operation.

A calibrated profile (``Hardware.engine``) predicts a block as its engine backend runs it: the
operations :mod:`laudnet.sparse.plan` lists for the block's shape, spec, work and backend, each
priced by its kind's fitted weights (:mod:`.costs`) of the features computed here, plus the cost of
a block call (:func:`~laudnet.sparse.plan.block_calls`).
The ``analytic`` feature maps each engine operation onto the paper's operator models
(:mod:`~laudnet.latency.analytic.operators`): a product on rows is a 1×1 convolution over ``m``
positions, a gather a copy, a scatter-add an element-wise sum, and so on.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np

from ...dynamic.spec import StageSpec
from ...models.structure import BlockShape, ModelShape, conv_output_hw
from ...sparse.plan import CONV_KINDS, BlockWork, EngineOp, block_calls, block_ops, expected_work, head_ops, stem_ops
from ..analytic import operators as op
from ..hardware import Hardware
from ..interface import BlockDensity
from ..costs import FEATURES, OVERHEAD_KINDS

CACHE_SIZE = 1 << 16


def expected_block_seconds(hw: Hardware, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
    """Seconds per call of ``block`` at a :class:`~laudnet.latency.blocks.BlockDensity`, by part.

    The engine keeps whole channel groups, so a channel density between two whole numbers of groups
    is a mix of the two (some calls keep one group more): both are priced and weighted, so that
    the prediction grows smoothly with the density instead of in steps.
    """
    if not spec.has_channel:
        return block_seconds(hw, block, spec, block_work(block, spec, hw.batch_size, density))
    groups = block.width // spec.channel_granularity
    fewer = math.floor(density.channel * groups)
    share = density.channel * groups - fewer
    parts: dict[str, float] = {}
    for kept, weight in ((fewer, 1.0 - share), (fewer + 1, share)):
        if weight > 0:
            work = block_work(block, spec, hw.batch_size, replace(density, channel=min(kept / groups, 1.0)))
            for part, seconds in block_seconds(hw, block, spec, work).items():
                parts[part] = parts.get(part, 0.0) + weight * seconds
    return parts


def block_work(block: BlockShape, spec: StageSpec, batch: int, density: BlockDensity) -> BlockWork:
    """The engine's work for a :class:`~laudnet.latency.blocks.BlockDensity` (a conv1 density that
    was not measured is the expected dilation of the cells)."""
    return expected_work(
        block, spec, batch, cells=density.conv3, channel=density.channel,
        conv1=density.conv1 if density.conv1_measured else None,
    )


def block_seconds(hw: Hardware, block: BlockShape, spec: StageSpec, work: BlockWork) -> dict[str, float]:
    """Seconds per call of ``block`` doing ``work``, by part of the block (plus the call overheads),
    as the profile's engine backend runs it."""
    parts = price(hw, block_ops(block, spec, work, hw.engine.backend))
    parts["overhead"] = sum(count * overhead_seconds(hw, kind) for kind, count in
                            block_calls(block, spec, work, hw.engine.backend))
    return parts


def stem_seconds(hw: Hardware, shape: ModelShape) -> float:
    """The stem, plus the Python cost of a model call."""
    return sum(price(hw, stem_ops(shape, hw.batch_size, hw.engine.backend)).values()) + overhead_seconds(hw, "model")


def head_seconds(hw: Hardware, shape: ModelShape) -> float:
    return sum(price(hw, head_ops(shape, hw.batch_size)).values())


def price(hw: Hardware, ops: tuple[EngineOp, ...]) -> dict[str, float]:
    """Seconds of ``ops`` (each times its count, with the Python glue around it), summed by role."""
    glue = overhead_seconds(hw, "glue")
    parts: dict[str, float] = {}
    for operation in ops:
        if operation.count:
            seconds = operation.count * (_op_seconds(hw, operation.kind, operation.dims) + glue)
            parts[operation.role] = parts.get(operation.role, 0.0) + seconds
    return parts


def overhead_seconds(hw: Hardware, kind: str) -> float:
    if kind not in OVERHEAD_KINDS:
        raise ValueError(f"unknown overhead kind {kind!r}; known: {', '.join(OVERHEAD_KINDS)}")
    return hw.engine.of(kind)["launch"] * hw.launch_time_s


@lru_cache(maxsize=CACHE_SIZE)
def _op_seconds(hw: Hardware, kind: str, dims: tuple[int, ...]) -> float:
    weights = hw.engine.of(kind)
    return float(np.dot([weights[name] for name in FEATURES], _features(hw, kind, dims)))


def op_features(hw: Hardware, operation: EngineOp) -> np.ndarray:
    """The features of one execution of ``operation`` on ``hw``, in seconds, in :data:`FEATURES` order
    (a cached, read-only array)."""
    return _features(hw, operation.kind, operation.dims)


@lru_cache(maxsize=CACHE_SIZE)
def _features(hw: Hardware, kind: str, dims: tuple[int, ...]) -> np.ndarray:
    operation = EngineOp(kind, "", dims)
    data, words = operation.traffic, hw.dram_words_per_s
    values = np.array([
        hw.launch_time_s,
        analytic_seconds(hw, operation),
        operation.macs / (hw.n_pes * hw.lanes_per_pe * hw.frequency_hz),
        data.inputs / words,
        data.weights / words,
        data.outputs / words,
        data.rows / hw.frequency_hz,
    ])
    values.setflags(write=False)
    return values


def analytic_seconds(hw: Hardware, operation: EngineOp) -> float:
    """The paper's operator model of ``operation`` on ``hw`` (each kernel with its launch)."""
    kind, d = operation.kind, operation.dims
    one = hw.with_batch(1)
    if kind == "matmul":
        m, k, n = d
        return op.conv(one, k, n, (max(m, 1), 1), 1)
    if kind == "grouped_matmul":
        g, m, k, n = d
        return op.conv(one, g * k, g * n, (max(m, 1), 1), 1, 1, g)
    if kind in CONV_KINDS:
        b, cin, cout, h, w, kernel, stride, groups = d
        out_hw = conv_output_hw((h, w), kernel, stride, kernel // 2)
        return op.conv(hw.with_batch(b), cin, cout, out_hw, kernel, stride, groups)
    if kind in ("gather", "slice"):
        rows, width = d
        return op.pool(one, max(width, 1), (max(rows, 1), 1), (max(rows, 1), 1))
    if kind == "scatter":
        rows, width = d
        return op.add(one, max(width, 1), (max(rows, 1), 1))
    if kind == "elementwise":
        return op.add(one, 1, (max(d[0], 1), 1))
    if kind == "reduce":
        return op.pool(one, 1, (max(d[0], 1), 1), (max(d[1], 1), 1))
    if kind == "max_pool":
        b, c, h, w = d
        return op.pool(hw.with_batch(b), c, (h, w), conv_output_hw((h, w), 3, 2, 1))
    if kind == "spatial_masker":
        b, cin, h, w, gh, gw, _ = d
        hb = hw.with_batch(b)
        seconds = op.pool(hb, cin, (h, w), (gh, gw)) + op.conv(hb, cin, 2, (gh, gw), 1)
        if (gh, gw) != (1, 1):  # pixel masks: cells expanded, dilated through conv2's window
            seconds += op.add(hb, 1, (h, w)) + op.pool(hb, 1, (h, w), (h, w))
        return seconds
    if kind == "channel_masker":
        b, cin, h, w, hidden, groups = d
        hb = hw.with_batch(b)
        linears = op.fc(hb, cin, hidden) + op.fc(hb, hidden, 2 * groups) if hidden else op.fc(hb, cin, 2 * groups)
        return op.pool(hb, cin, (h, w), (1, 1)) + linears
    raise ValueError(f"unknown operation kind {kind!r}")

