"""Choosing the spatial granularity S and channel granularity G of each stage by predicted latency.

Blocks of different stages do not interact in the latency model, so each stage is searched
on its own over the valid candidates: S divides the stage's feature map (patches tile it
exactly); G divides the block width and, for a grouped conv, is a multiple of its group
width (as the models require). G equal to the width is left out: one gate for the whole
branch is layer skipping, without the cost of its gate. A vision transformer has nothing to
search (each token and each head decides alone): its result has the one candidate S = G = 1.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ...dynamic.spec import DynamicSpec, PerStage, StageSpec, mode_parts
from ...errors import UsageError
from ...models.structure import BlockShape, InputSize
from ..interface import BlockDensity
from ..prediction import LatencyLike, ModelLike, StatsLike, block_latency, latency_model, predict, resolve_shape


@dataclass(frozen=True)
class StageChoice:
    """The candidates tried for one stage, their latencies and the best, in ms per batch."""

    stage: int
    mode: str
    candidates: tuple[tuple[int, int], ...]
    latencies_ms: tuple[float, ...]
    spatial_granularity: int
    channel_granularity: int
    latency_ms: float
    baseline_ms: float
    static_ms: float


@dataclass(frozen=True)
class GranularityResult:
    """Per-stage choices and residual-stage totals: chosen, at S = G = 1, and static."""

    model: str
    hardware: str
    batch: int
    spec: DynamicSpec
    stages: tuple[StageChoice, ...]
    latency_ms: float
    baseline_ms: float
    static_ms: float


def spatial_candidates(size: tuple[int, int]) -> tuple[int, ...]:
    """Patch sizes that tile a ``size`` feature map exactly."""
    return tuple(s for s in range(1, min(size) + 1) if size[0] % s == 0 and size[1] % s == 0)


def channel_candidates(block: BlockShape) -> tuple[int, ...]:
    """Channel-group sizes for ``block``: proper divisors of its width, whole conv groups."""
    group_width = block.width // block.groups
    return tuple(
        g for g in range(1, block.width) if block.width % g == 0 and (block.groups == 1 or g % group_width == 0)
    )


def search_granularity(
    model: ModelLike,
    hardware: LatencyLike,
    mode: PerStage,
    density: float | None = None,
    *,
    stats: StatsLike | None = None,
    batch: int | None = None,
    input_size: InputSize = 224,
    reference_compatible: bool = False,
) -> GranularityResult:
    """Find per stage the granularity with the lowest predicted latency at ``density`` (or ``stats``).

    The baseline is the finest granularity: S=1, and G=1 (one conv group for RegNetY, whose channel
    groups may not split a conv group).
    """
    shape = resolve_shape(model, input_size)
    if shape.family == "vit":
        return _vit_result(model, hardware, mode, density, stats, batch, input_size, reference_compatible)
    stages = sorted({b.stage for b in shape.blocks})
    finest = [min(channel_candidates(shape.stage_blocks(stage)[-1])) for stage in stages]
    baseline = predict(
        model, hardware, mode=mode, density=density, stats=stats, spatial_granularity=1, channel_granularity=finest,
        batch=batch, input_size=input_size, reference_compatible=reference_compatible,
    )
    if not any(s.mode in ("spatial", "channel", "both") for s in baseline.spec.stages):
        modes = "-".join(baseline.spec.modes)
        raise UsageError(f"granularity search needs a spatial, channel or both stage; got {modes}")
    latency = latency_model(hardware, baseline.batch)

    def stage_ms(blocks: list[BlockShape], densities: list[BlockDensity], spec: StageSpec) -> float:
        results = [block_latency(latency, b, spec, d) for b, d in zip(blocks, densities)]
        return sum(r.residual_ms(reference_compatible) for r in results)

    choices = []
    for stage, stage_spec in enumerate(baseline.spec.stages):
        blocks = list(shape.stage_blocks(stage))
        densities = [r.density for r in baseline.blocks if r.stage == stage]
        candidates = _candidates(stage_spec, blocks[-1])
        latencies = [
            stage_ms(blocks, densities, StageSpec(stage_spec.mode, s, g)) for s, g in candidates
        ]
        best = min(range(len(candidates)), key=latencies.__getitem__)
        static = stage_ms(blocks, [BlockDensity()] * len(blocks), StageSpec())
        choices.append(
            StageChoice(
                stage=stage,
                mode=stage_spec.mode,
                candidates=candidates,
                latencies_ms=tuple(latencies),
                spatial_granularity=candidates[best][0],
                channel_granularity=candidates[best][1],
                latency_ms=latencies[best],
                baseline_ms=baseline.stages_ms[stage],
                static_ms=static,
            )
        )
    spec = DynamicSpec(tuple(StageSpec(c.mode, c.spatial_granularity, c.channel_granularity) for c in choices))
    return GranularityResult(
        model=baseline.model,
        hardware=baseline.hardware,
        batch=baseline.batch,
        spec=spec,
        stages=tuple(choices),
        latency_ms=sum(c.latency_ms for c in choices),
        baseline_ms=baseline.residual_ms,
        static_ms=sum(c.static_ms for c in choices),
    )


def _vit_result(
    model: ModelLike, hardware: LatencyLike, mode: PerStage, density: float | None, stats: StatsLike | None,
    batch: int | None, input_size: InputSize, reference_compatible: bool,
) -> GranularityResult:
    """A ViT has no granularity to search: each token and each head decides alone (S = G = 1), the only
    candidate of every stage."""
    kwargs = dict(stats=stats, batch=batch, input_size=input_size, reference_compatible=reference_compatible)
    chosen = predict(model, hardware, mode=mode, density=density, spatial_granularity=1, channel_granularity=1,
                     **kwargs)
    if not any(mode_parts(s.mode) & {"spatial", "channel"} for s in chosen.spec.stages):
        raise UsageError(f"granularity search needs a spatial or channel stage; got {'-'.join(chosen.spec.modes)}")
    static = predict(model, hardware, mode="static", **{**kwargs, "stats": None})
    choices = tuple(
        StageChoice(stage, spec.mode, ((1, 1),), (ms,), 1, 1, ms, ms, static_ms)
        for stage, (spec, ms, static_ms) in enumerate(zip(chosen.spec.stages, chosen.stages_ms, static.stages_ms))
    )
    return GranularityResult(chosen.model, chosen.hardware, chosen.batch, chosen.spec, choices, chosen.residual_ms,
                             chosen.residual_ms, static.residual_ms)


def _candidates(spec: StageSpec, block: BlockShape) -> tuple[tuple[int, int], ...]:
    sizes = spatial_candidates(block.out_hw) if spec.mode in ("spatial", "both") else (1,)
    groups = channel_candidates(block) if spec.has_channel else (1,)
    return tuple(itertools.product(sizes, groups))
