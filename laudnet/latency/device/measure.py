"""Measuring the sparse engine on this device: whole models and each block where it runs.

Calibration fits the block and call overheads on these measurements, and validation compares
predictions with them on other configurations, so both measure the same way: a LAUD model built
with an :class:`EngineConfig`, its gates set to the configuration's density on random images
(:func:`laudnet.sparse.set_gate_density`), converted to the engine, then timed after a warm-up.
Each round runs the model once with hooks that time its blocks, stem and head where they run
(caches as in a real forward pass), and once without hooks for the whole-model time; the fastest
round of each is kept (:func:`laudnet.timing.fastest`). The work each block did (positions, channels, whether it ran) is read
from the model's own masks on the timed images.

Configurations are measured one after the other, each alone in memory, as a deployed model runs:
interleaving several models was measured to slow each by 10-15% on a 2-core CPU (the allocator
returns and re-faults their activations, their weights evict each other from the caches), by an
amount that depends on which models share the run, so a profile fitted in one mix mispredicts
another.
"""

from __future__ import annotations

import logging
import os
import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch

from ...dynamic.spec import DynamicSpec
from ...errors import UsageError
from ...models.registry import create_model
from ...models.structure import ModelShape, model_shape, parse_input_size
from ...sparse import set_gate_density, convert
from ...sparse.plan import BlockWork, work_of_masks
from ...timing import fastest, time_call_ms
from ..interface import BlockDensity

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 8


@dataclass
class MeasuringSession:
    """The thread count measurements ran at and the machine's load average before and after them."""

    threads: int
    load_before: tuple[float, ...]
    load_after: tuple[float, ...] = ()


@contextmanager
def measuring(threads: int) -> Iterator[MeasuringSession]:
    """Run torch at ``threads`` threads inside, restoring the count after; record the load around it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    session = MeasuringSession(threads, tuple(round(v, 2) for v in os.getloadavg()))
    try:
        yield session
    finally:
        torch.set_num_threads(previous)
        session.load_after = tuple(round(v, 2) for v in os.getloadavg())


@dataclass(frozen=True)
class EngineConfig:
    """One configuration of the engine to time: model, input size, dynamic spec, gate density, batch."""

    model: str
    input_size: tuple[int, int]
    spec: DynamicSpec
    density: float
    batch: int = 1

    @classmethod
    def build(
        cls, model: str, input_size, mode: str, spatial_granularity="1", channel_granularity="1",
        density: float = 1.0, batch: int = 1,
    ) -> "EngineConfig":
        spec = DynamicSpec.build(mode, spatial_granularity, channel_granularity)
        if not 0.0 <= density <= 1.0:
            raise UsageError(f"density must be in [0, 1], got {density}")
        return cls(model, parse_input_size(input_size), spec, float(density), int(batch))

    def describe(self) -> str:
        h, w = self.input_size
        return f"{self.model} {h}x{w} {self.spec.describe()} d={self.density:g} b={self.batch}"


@dataclass(frozen=True)
class BlockMeasurement:
    """Milliseconds of one block where it ran (fastest round), and the work it did."""

    name: str
    stage: int
    ms: float
    work: BlockWork
    density: BlockDensity


@dataclass(frozen=True)
class EngineMeasurement:
    """Milliseconds of one configuration (fastest rounds): whole model (no hooks), stem, head and blocks."""

    config: EngineConfig
    model_ms: float
    stem_ms: float
    head_ms: float
    blocks: tuple[BlockMeasurement, ...]
    shape: ModelShape
    repeats: int


@dataclass
class _Timed:
    """A built configuration, ready to time."""

    config: EngineConfig
    engine: torch.nn.Module
    images: torch.Tensor
    shape: ModelShape
    works: list[BlockWork]


def measure_engines(
    configs: Sequence[EngineConfig], *, repeats: int | None = 20, budget_s: float | None = None, warmup: int = 2,
    device: str = "cpu", seed: int = 0, progress: Callable[[int, int], None] | None = None,
    max_repeats: int = 51,
) -> list[EngineMeasurement]:
    """Time every configuration, one after the other: ``repeats`` rounds each, or as many as fit an
    equal share of ``budget_s`` (between 5 and ``max_repeats``). ``progress(done, total)`` counts
    the configurations measured."""
    if (repeats is None) == (budget_s is None):
        raise ValueError("give either repeats or budget_s")
    if (repeats is not None and repeats < 1) or warmup < 1:
        raise UsageError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    results = []
    started = time.perf_counter()
    for index, config in enumerate(configs):
        timed = _build(config, device, seed)
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(warmup):
                timed.engine(timed.images)
            rounds = repeats
            if rounds is None:
                share = (budget_s - (time.perf_counter() - started)) / (len(configs) - index)
                round_s = 2 * (time.perf_counter() - start) / warmup  # a hooked and a plain run per round
                rounds = int(min(max_repeats, max(5, share / max(round_s, 1e-9))))
            model_ms, parts = [], []
            for _ in range(rounds):
                parts.append(_hooked_run(timed, device))
                model_ms.append(time_call_ms(functools.partial(timed.engine, timed.images), device))
        results.append(_summarise(timed, model_ms, parts, rounds))
        del timed  # free this configuration's model before the next one is built
        if progress is not None:
            progress(index + 1, len(configs))
    return results


def _build(config: EngineConfig, device: str, seed: int) -> _Timed:
    """The configuration's model with its gates at the density, its engine, images and block work."""
    spec = config.spec
    torch.manual_seed(seed)  # the same weights, hence the same masks, on every run
    model = create_model(config.model, **spec.to_dict()).to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(max(CALIBRATION_IMAGES, config.batch), 3, *config.input_size, generator=generator)
    images = images.to(device)
    if not spec.is_static:
        set_gate_density(model, config.density, images, seed=seed)
    shape = model_shape(model, config.input_size)
    timed_images = images[: config.batch].contiguous()
    works = _block_work(model, shape, timed_images)
    return _Timed(config, convert(model, backend="torch"), timed_images, shape, works)


def _block_work(model: torch.nn.Module, shape: ModelShape, images: torch.Tensor) -> list[BlockWork]:
    """The work of every block on ``images``, from the model's own masks."""
    works: dict[str, BlockWork] = {}
    shapes = {b.name: b for b in shape.blocks}

    def record(block, args):
        works[block.block_name] = work_of_masks(shapes[block.block_name], block.compute_masks(args[0]), images.shape[0])

    handles = [block.register_forward_pre_hook(record) for _, block in model.named_dynamic_blocks()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [works[b.name] for b in shape.blocks]


def _hooked_run(t: _Timed, device: str) -> list[float]:
    """One forward pass with a time mark at the start and end of every block: stem, blocks, head (ms)."""
    cuda = torch.device(device).type == "cuda"
    marks: list[float] = []

    def mark(*_):
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    handles = []
    for block in t.engine.blocks:
        handles += [block.register_forward_pre_hook(mark), block.register_forward_hook(mark)]
    try:
        mark()
        t.engine(t.images)
        mark()
    finally:
        for handle in handles:
            handle.remove()
    return [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]


def _summarise(t: _Timed, model_ms: list[float], runs: list[list[float]], repeats: int) -> EngineMeasurement:
    parts = [fastest(values) for values in zip(*runs)]
    # parts: stem, block 0, gap, block 1, gap, ..., block n-1, head
    blocks = tuple(
        BlockMeasurement(b.name, b.stage, parts[1 + 2 * i], work, density_of(b, work))
        for i, (b, work) in enumerate(zip(t.shape.blocks, t.works))
    )
    log.debug("%s: %.3f ms", t.config.describe(), fastest(model_ms))
    return EngineMeasurement(t.config, fastest(model_ms), parts[0], parts[-1], blocks, t.shape, repeats)


# A short fixed workload timed by calibration and again by every measurement against a profile:
# if the device has changed speed since (other tenants, clocks, power), the comparison says so.
REFERENCE = EngineConfig.build("laud_resnet50", 112, "static")
REFERENCE_REPEATS = 15


def reference_ms(device: str = "cpu") -> float:
    """Milliseconds of :data:`REFERENCE` on ``device`` now (fastest of :data:`REFERENCE_REPEATS`)."""
    (measurement,) = measure_engines([REFERENCE], repeats=REFERENCE_REPEATS, device=device)
    return measurement.model_ms


def fastest_of(passes: Sequence[EngineMeasurement]) -> EngineMeasurement:
    """One configuration measured in several passes, as one measurement: the fastest of each time."""
    first = passes[0]
    if any(m.config != first.config for m in passes):
        raise ValueError("fastest_of: the passes measured different configurations")
    blocks = tuple(
        replace(block, ms=fastest([m.blocks[i].ms for m in passes])) for i, block in enumerate(first.blocks)
    )
    return replace(
        first, model_ms=fastest([m.model_ms for m in passes]), stem_ms=fastest([m.stem_ms for m in passes]),
        head_ms=fastest([m.head_ms for m in passes]), blocks=blocks, repeats=sum(m.repeats for m in passes),
    )


def density_of(block, work: BlockWork) -> BlockDensity:
    """The measured fractions of ``work`` as the predictor's :class:`BlockDensity`."""
    if work.branch_rate < 1.0 or block.spec.mode == "layer":
        rate = work.branch_rate
        return BlockDensity(rate, rate, rate, 1.0)
    batch = work.batch
    conv1 = work.conv1_rows / (batch * block.in_hw[0] * block.in_hw[1])
    conv3 = work.conv3_rows / (batch * block.out_hw[0] * block.out_hw[1])
    return BlockDensity(conv1, conv3, conv3, work.channels / block.width)
