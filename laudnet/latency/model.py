"""Whole-model latency prediction: walk a backbone's blocks and add up their latencies."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Union

from torch import nn

from ..dynamic.spec import DynamicSpec, PerStage
from ..models.structure import InputSize, ModelShape, model_shape, parse_input_size
from . import engine
from . import operators as op
from .blocks import BlockDensity, BlockLatency, block_latency
from .hardware import Hardware, HardwareLike, get_hardware
from .summary import RunSummary, block_densities, read_summary

log = logging.getLogger(__name__)

ModelLike = Union[str, nn.Module]
StatsLike = Union[str, os.PathLike, RunSummary]


@dataclass(frozen=True)
class LatencyReport:
    """Predicted latency of a model on one device, in ms per batch unless said otherwise.

    ``residual_ms`` sums the residual blocks (the number the paper reports); with
    ``reference_compatible`` it leaves out stride-1 projection shortcuts as the paper's
    evaluation script does. ``model_ms`` is everything: stem, every block and shortcut, head.
    """

    model: str
    hardware: str
    batch: int
    input_size: tuple[int, int]
    spec: DynamicSpec
    reference_compatible: bool
    residual_ms: float
    model_ms: float
    per_image_ms: float
    stem_ms: float
    head_ms: float
    stages_ms: tuple[float, ...]
    blocks: tuple[BlockLatency, ...]


def resolve_shape(model: ModelLike, input_size: InputSize = 224) -> ModelShape:
    """The block structure of a model instance or a model name, at ``input_size``."""
    size = parse_input_size(input_size)
    if isinstance(model, nn.Module):
        return model_shape(model, size)
    if not isinstance(model, str):
        raise ValueError(f"model: expected a model name or an nn.Module, got {type(model).__name__}")
    return _named_shape(model, size)


@lru_cache(maxsize=64)
def _named_shape(name: str, size: tuple[int, int]) -> ModelShape:
    """Cached: building a model is the slowest step of a cold prediction."""
    return model_shape(name, size)


def predict(
    model_or_name: ModelLike,
    hardware: HardwareLike,
    *,
    mode: PerStage | None = None,
    density: float | None = None,
    stats: StatsLike | None = None,
    spatial_granularity: PerStage | None = None,
    channel_granularity: PerStage | None = None,
    batch: int | None = None,
    input_size: InputSize = 224,
    reference_compatible: bool = False,
) -> LatencyReport:
    """Predict the latency of a (dynamic) backbone on ``hardware``.

    ``mode`` and the granularities (one for all stages or one per stage) default to the
    ``stats`` run's spec, else the model's own spec, else static with S = G = 1. Every gate
    runs at ``density``, or at the per-block densities measured in ``stats`` (a
    ``summary.json`` path or a :class:`RunSummary`). ``batch`` overrides the hardware's.
    """
    hw = get_hardware(hardware)
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        hw = hw.with_batch(batch)
    shape = resolve_shape(model_or_name, input_size)
    summary = read_summary(stats) if stats is not None and not isinstance(stats, RunSummary) else stats
    if summary is not None:
        _check_run(summary, shape)
    spec = _resolve_spec(shape, summary, mode, spatial_granularity, channel_granularity)
    densities = _resolve_densities(shape, spec, summary, density)
    blocks = tuple(block_latency(hw, b, spec.stages[b.stage], d) for b, d in zip(shape.blocks, densities))
    counted = [b.residual_ms(reference_compatible) for b in blocks]
    stages_ms = tuple(
        sum(ms for b, ms in zip(blocks, counted) if b.stage == stage) for stage in range(len(spec.stages))
    )
    stem_ms, head_ms = _stem_ms(hw, shape), _head_ms(hw, shape)
    model_ms = stem_ms + sum(b.total_ms for b in blocks) + head_ms
    log.debug("%s on %s (batch %d, %s): %.3f ms", shape.name, hw.name, hw.batch_size, spec.describe(), model_ms)
    return LatencyReport(
        model=shape.name,
        hardware=hw.name,
        batch=hw.batch_size,
        input_size=shape.input_hw,
        spec=spec,
        reference_compatible=reference_compatible,
        residual_ms=sum(counted),
        model_ms=model_ms,
        per_image_ms=model_ms / hw.batch_size,
        stem_ms=stem_ms,
        head_ms=head_ms,
        stages_ms=stages_ms,
        blocks=blocks,
    )


def _check_run(summary: RunSummary, shape: ModelShape) -> None:
    """Warn when the run measured another model or resolution than the one predicted."""
    if summary.model is not None and summary.model != shape.name:
        log.warning("%s: densities measured on %s, predicting %s", summary.path, summary.model, shape.name)
    if summary.input_size is not None and summary.input_size != shape.input_hw:
        log.warning(
            "%s: densities measured at %dx%d, predicting at %dx%d", summary.path, *summary.input_size, *shape.input_hw
        )


def _resolve_spec(
    shape: ModelShape, summary: RunSummary | None, mode: PerStage | None,
    spatial_granularity: PerStage | None, channel_granularity: PerStage | None,
) -> DynamicSpec:
    n_stages = 1 + max(b.stage for b in shape.blocks)
    if summary is not None and summary.spec is not None:
        base = summary.spec
    else:
        base = DynamicSpec(tuple(shape.stage_blocks(stage)[0].spec for stage in range(n_stages)))
    return DynamicSpec.build(
        mode if mode is not None else list(base.modes),
        spatial_granularity if spatial_granularity is not None else [s.spatial_granularity for s in base.stages],
        channel_granularity if channel_granularity is not None else [s.channel_granularity for s in base.stages],
        num_stages=n_stages,
    )


def _resolve_densities(
    shape: ModelShape, spec: DynamicSpec, summary: RunSummary | None, density: float | None,
) -> Sequence[BlockDensity]:
    if summary is not None:
        if density is not None:
            raise ValueError("give either a density or stats from a run, not both")
        return block_densities(summary, shape)
    if density is None:
        if not spec.is_static:
            raise ValueError(f"mode {'-'.join(spec.modes)} is dynamic: give a density in [0, 1] or stats from a run")
        density = 1.0
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    return [BlockDensity.uniform(spec.stages[b.stage].mode, float(density)) for b in shape.blocks]


def _stem_ms(hw: Hardware, shape: ModelShape) -> float:
    if hw.calibrated:
        return 1e3 * engine.stem_seconds(hw, shape)
    seconds = sum(
        op.conv(hw, c.in_channels, c.out_channels, c.out_hw, c.kernel, c.stride, c.groups) for c in shape.stem
    )
    if shape.stem_pool is not None:
        p = shape.stem_pool
        seconds += op.pool(hw, p.channels, p.in_hw, p.out_hw)
    return 1e3 * seconds


def _head_ms(hw: Hardware, shape: ModelShape) -> float:
    if hw.calibrated:
        return 1e3 * engine.head_seconds(hw, shape)
    last = shape.blocks[-1]
    seconds = op.pool(hw, last.out_channels, last.out_hw, (1, 1))
    seconds += op.fc(hw, shape.head.in_channels, shape.head.out_channels)
    return 1e3 * seconds
