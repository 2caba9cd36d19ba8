"""Whole-model latency prediction: walk a backbone's blocks and add up their latencies.

:func:`latency_model` is the one place that picks the latency model a hardware description
calls for (analytic, or calibrated where a profile carries engine costs); :func:`predict`,
:func:`block_latency` and the design tools take a hardware description or a model alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Union

from torch import nn

from ..dynamic.spec import COMBINED_MODES, MODES, DynamicSpec, PerStage, StageSpec, mode_parts
from ..errors import UsageError
from ..models.structure import BlockShape, InputSize, ModelShape, model_shape, parse_input_size
from ..models.vit_structure import TransformerBlockShape
from .analytic import AnalyticModel
from .calibrated import CalibratedModel
from .hardware import HardwareLike, get_hardware
from .interface import BlockDensity, BlockLatency, LatencyModel
from .summary import RunSummary, block_densities, read_summary

log = logging.getLogger(__name__)

ModelLike = Union[str, nn.Module]
StatsLike = Union[str, os.PathLike, RunSummary]
LatencyLike = Union[HardwareLike, LatencyModel]


def latency_model(spec: LatencyLike, batch: int | None = None) -> LatencyModel:
    """A latency model from a preset name, a YAML spec or profile, a :class:`~.hardware.Hardware`,
    or a model itself, predicting for ``batch`` (default: the hardware's).

    A hardware description with fitted engine costs (a profile from ``laudnet latency calibrate``)
    gives a :class:`~.calibrated.CalibratedModel`; any other, the paper's :class:`~.analytic.AnalyticModel`.
    """
    if isinstance(spec, LatencyModel):
        model = spec
    else:
        hardware = get_hardware(spec)
        model = CalibratedModel(hardware) if hardware.engine is not None else AnalyticModel(hardware)
    if batch is None:
        return model
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    return model.with_batch(batch)


def block_latency(model: LatencyLike, block: BlockShape, spec: StageSpec, density: BlockDensity) -> BlockLatency:
    """Predict ``block`` run as ``spec`` says with the given densities."""
    if isinstance(block, TransformerBlockShape):
        _check_transformer_spec(block, spec)
    elif spec.mode not in MODES:
        raise UsageError(f"unknown mode {spec.mode!r}; accepted modes are {', '.join(MODES)}")
    elif spec.has_channel and not 1 <= spec.channel_granularity <= block.width:
        raise UsageError(
            f"{block.name}: channel granularity {spec.channel_granularity} must be between 1 and the "
            f"block width {block.width}"
        )
    latency = latency_model(model)
    seconds = latency.block_seconds(block, spec, density)
    reference = latency.reference_block_seconds(block, spec, density)
    return BlockLatency(
        name=block.name,
        stage=block.stage,
        stride=block.stride,
        mode=spec.mode,
        spatial_granularity=spec.spatial_granularity,
        channel_granularity=spec.channel_granularity,
        density=density,
        ops_ms={name: 1e3 * value for name, value in seconds.items()},
        reference_ms=None if reference is None else 1e3 * reference,
    )


def _check_transformer_spec(block: TransformerBlockShape, spec: StageSpec) -> None:
    """A ViT block's spec: a mode of the ViT family, one token per decision, G heads dividing the heads."""
    if spec.mode not in MODES + COMBINED_MODES:
        raise UsageError(f"unknown mode {spec.mode!r}; accepted modes are {', '.join(MODES + COMBINED_MODES)}")
    parts = mode_parts(spec.mode)
    if "spatial" in parts and spec.spatial_granularity != 1:
        raise UsageError(f"{block.name}: a ViT decides one token at a time: spatial granularity must be 1, "
                         f"got {spec.spatial_granularity}")
    if "channel" in parts and block.heads % spec.channel_granularity != 0:
        raise UsageError(f"{block.name}: channel granularity {spec.channel_granularity} (heads per decision) must "
                         f"divide the {block.heads} heads")


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
        raise UsageError(f"model: expected a model name or an nn.Module, got {type(model).__name__}")
    return _named_shape(model, size)


@lru_cache(maxsize=64)
def _named_shape(name: str, size: tuple[int, int]) -> ModelShape:
    """Cached: building a model is the slowest step of a cold prediction."""
    return model_shape(name, size)


def predict(
    model_or_name: ModelLike,
    hardware: LatencyLike,
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
    """Predict the latency of a (dynamic) backbone on ``hardware`` (a device description or a latency model).

    ``mode`` and the granularities (one for all stages or one per stage) default to the
    ``stats`` run's spec, else the model's own spec, else static with S = G = 1. Every gate
    runs at ``density``, or at the per-block densities measured in ``stats`` (a
    ``summary.json`` path or a :class:`RunSummary`). ``batch`` overrides the hardware's.
    """
    latency = latency_model(hardware, batch)
    shape = resolve_shape(model_or_name, input_size)
    summary = read_summary(stats) if stats is not None and not isinstance(stats, RunSummary) else stats
    if summary is not None:
        _check_run(summary, shape)
    spec = _resolve_spec(shape, summary, mode, spatial_granularity, channel_granularity)
    densities = _resolve_densities(shape, spec, summary, density)
    blocks = tuple(block_latency(latency, b, spec.stages[b.stage], d) for b, d in zip(shape.blocks, densities))
    counted = [b.residual_ms(reference_compatible) for b in blocks]
    stages_ms = tuple(
        sum(ms for b, ms in zip(blocks, counted) if b.stage == stage) for stage in range(len(spec.stages))
    )
    stem_ms, head_ms = 1e3 * latency.stem_seconds(shape), 1e3 * latency.head_seconds(shape)
    model_ms = stem_ms + sum(b.total_ms for b in blocks) + head_ms
    log.debug("%s on %s (batch %d, %s): %.3f ms", shape.name, latency.name, latency.batch, spec.describe(), model_ms)
    return LatencyReport(
        model=shape.name,
        hardware=latency.name,
        batch=latency.batch,
        input_size=shape.input_hw,
        spec=spec,
        reference_compatible=reference_compatible,
        residual_ms=sum(counted),
        model_ms=model_ms,
        per_image_ms=model_ms / latency.batch,
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
        dash_combinations=shape.family == "vit",
    )


def _resolve_densities(
    shape: ModelShape, spec: DynamicSpec, summary: RunSummary | None, density: float | None,
) -> Sequence[BlockDensity]:
    if summary is not None:
        if density is not None:
            raise UsageError("give either a density or stats from a run, not both")
        return block_densities(summary, shape)
    if density is None:
        if not spec.is_static:
            raise UsageError(f"mode {'-'.join(spec.modes)} is dynamic: give a density in [0, 1] or stats from a run")
        density = 1.0
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0:
        raise UsageError(f"density must be a number in [0, 1], got {density!r}")
    return [BlockDensity.uniform(spec.stages[b.stage].mode, float(density)) for b in shape.blocks]

