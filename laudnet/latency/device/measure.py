"""Measuring the sparse engine on this device: whole models and each block where it runs.

Calibration fits the block and call overheads on these measurements, and validation compares
predictions with them on other configurations, so both measure the same way: a LAUD model built
with an :class:`EngineConfig`, its gates set to the configuration's density on random images
(:func:`laudnet.sparse.set_gate_density`), converted to the engine, then timed after a warm-up.
Each round runs the model once with hooks that time its blocks, stem and head where they run
(caches as in a real forward pass), and once without hooks for the whole-model time; the
whole-model time is the fastest plain run (:func:`laudnet.timing.fastest`), its parts their mean
over the fastest rounds, scaled to add up to it (:func:`typical_parts`). The work each block did
(positions, channels, whether it ran) is read from the model's own masks on the timed images.

Every configuration is built first, then timed in :data:`VISITS` visits spread over the whole
measurement, a few consecutive rounds per visit, each visit after an untimed call (caches and
buffers as a deployed model's after its previous call). A shared machine's speed drifts in phases
of a few seconds: on the 2-core VM laudnet is developed on, one ONNX Runtime ResNet-50 engine's
consecutive calls read 39-65 ms in runs of 5-20 calls. Timed in one stretch of a few seconds, a
configuration may see only slow phases; in visits spread over minutes its fastest rounds come from
the machine's fast phases like every other configuration's. Measured, two passes of five
configurations against each other (profiled block spans): within ±10% of themselves for 55-65% of
blocks timed in one stretch, 65-81% in 4 visits, 81-99% in 6. The phases last minutes too; a
reference workload timed after every visit tells how fast the machine was
(:meth:`EngineMeasurement.at_reference`).
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import onnx
import torch

from ...dynamic.spec import DynamicSpec
from ...errors import UsageError
from ...models.registry import create_model
from ...models.structure import ModelShape, model_shape, parse_input_size
from ...sparse import set_gate_density, convert
from ...sparse.export import engine_graph, fixed_batch, image_feeds, ort_session, profile_events, profiled_shapes
from ...sparse.plan import BlockWork, work_of_masks
from ...timing import fastest, time_call_ms
from ..costs import check_backend
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
    """Milliseconds of one block where it ran (in the fastest rounds), and the work it did."""

    name: str
    stage: int
    ms: float
    work: BlockWork
    density: BlockDensity


@dataclass(frozen=True)
class NodeTime:
    """One ONNX Runtime node of a measured graph (fastest round): its operator, the shapes it ran
    on (as the profiler records them), and whether its first input is a constant (a weight)."""

    name: str
    op_name: str
    seconds: float
    inputs: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]
    constant_input: bool


@dataclass(frozen=True)
class EngineMeasurement:
    """Milliseconds of one configuration (fastest rounds): whole model (not profiled), stem, head
    and blocks; with the onnxruntime backend also every node that ran (``nodes``)."""

    config: EngineConfig
    model_ms: float
    stem_ms: float
    head_ms: float
    blocks: tuple[BlockMeasurement, ...]
    shape: ModelShape
    repeats: int
    backend: str = "torch"
    nodes: tuple[NodeTime, ...] = ()
    reference_ms: float | None = None

    def at_reference(self, reference_ms: float) -> "EngineMeasurement":
        """Every time as if the device had run at the speed at which :data:`REFERENCE` takes
        ``reference_ms``: scaled by ``reference_ms / self.reference_ms`` (see :func:`measure_engines`)."""
        if self.reference_ms is None:
            raise ValueError("this measurement timed no reference workload (measure_engines(reference=True))")
        scale = reference_ms / self.reference_ms
        return replace(
            self, model_ms=self.model_ms * scale, stem_ms=self.stem_ms * scale, head_ms=self.head_ms * scale,
            blocks=tuple(replace(b, ms=b.ms * scale) for b in self.blocks),
            nodes=tuple(replace(n, seconds=n.seconds * scale) for n in self.nodes), reference_ms=reference_ms,
        )


class _TorchParts:
    """The torch engine timed where it runs: one forward pass with a time mark at the start and end
    of every block."""

    def __init__(self, engine: torch.nn.Module, images: torch.Tensor, device: str) -> None:
        self.engine, self.images, self.device = engine, images, device
        self.rounds: list[list[float]] = []

    def run(self) -> None:
        cuda = torch.device(self.device).type == "cuda"
        marks: list[float] = []

        def mark(*_):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        handles = []
        for block in self.engine.blocks:
            handles += [block.register_forward_pre_hook(mark), block.register_forward_hook(mark)]
        try:
            mark()
            self.engine(self.images)
            mark()
        finally:
            for handle in handles:
                handle.remove()
        spans = [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]
        # stem, block 0, hook gap, block 1, ..., block n-1, head: the gaps are the hooks' own cost
        self.rounds.append([spans[0], *spans[1:-1:2], spans[-1]])

    def finish(self, model_ms: Sequence[float]) -> tuple[list[list[float]], tuple[NodeTime, ...]]:
        return self.rounds, ()


MIN_PROFILED_SHARE = 0.2  # the least of its profiled time a part keeps (see _OrtParts.finish)


class _OrtParts:
    """The ONNX Runtime engine timed where it runs: a profiling session of the engine's own graph.

    A run is split at the first node of each block (nodes are named after their block): the stem
    is everything before block 0 (with the session call itself), a block runs until the next one
    starts, the head from its first node to the end of the run. Profiling costs time per node (about
    10-18 µs here, depending on the model): the difference between the fastest profiled and plain
    runs, shared out per node, is taken off every span, so that the spans add up to the plain run.
    (Tried: the median difference of a round's profiled and plain runs, which agreed better with
    itself between passes but takes off a slow phase's profiler cost from the fastest spans: the
    calibration's block fit went from 10-12% to 19% median error.) ``call`` runs the plain session.
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, shape: ModelShape, threads: int) -> None:
        graph = engine_graph(model, tuple(images.shape[2:]), threads)
        self.plain = ort_session(graph, threads, layout=False)
        self.session = ort_session(graph, threads, profile=True, layout=False)
        self.feeds = image_feeds(images.numpy(), fixed_batch(graph))
        self.names = [b.name for b in shape.blocks]
        graphs = list(_graphs(graph.graph))
        self.constants = {t.name for g in graphs for t in g.initializer} | {
            out for g in graphs for n in g.node if n.op_type == "Constant" for out in n.output}
        self.inputs = {n.name: (n.input[0] if n.input else "") for g in graphs for n in g.node}

    def call(self) -> None:
        for feed in self.feeds:
            self.plain.run(None, feed)

    def run(self) -> None:
        for feed in self.feeds:
            self.session.run(None, feed)

    def finish(self, model_ms: Sequence[float]) -> tuple[list[list[float]], tuple[NodeTime, ...]]:
        events = profile_events(self.session)
        runs = [e for e in events if e.get("cat") == "Session"]
        nodes = [e for e in events if e.get("cat") == "Node"]
        per_run = [[e for e in nodes if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]] for run in runs]
        split, counts = zip(*(self._split(run, mine) for run, mine in zip(runs, per_run)))
        calls = len(self.feeds)  # session calls per round: their parts add up
        spans = [[sum(v) for v in zip(*split[i:i + calls])] for i in range(0, len(split), calls)]
        per_part = [sum(v) for v in zip(*counts[:calls])]  # nodes of each part in a round
        per_node = max(fastest([sum(r) for r in spans]) - fastest(model_ms), 0.0) / sum(per_part)
        # The profiler's cost varies per node: where its average share would take most of a part
        # (a tiny block of a tiny model), the part keeps a floor of its profiled time.
        rounds = [[max(ms - n * per_node, MIN_PROFILED_SHARE * ms) for ms, n in zip(r, per_part)] for r in spans]
        return rounds, self._node_times(nodes)

    def _split(self, run: dict, nodes: list[dict]) -> tuple[list[float], list[int]]:
        """Milliseconds and nodes of the stem, every block and the head in one profiled run."""
        parts = ["stem"] + self.names + ["head"]
        starts: dict[str, float] = {}
        counts = dict.fromkeys(parts, 0)
        for event in nodes:
            scope = event["name"].split("/", 1)[0]
            starts.setdefault(scope, event["ts"])
            counts[scope if scope in counts else "stem"] += 1
        missing = [n for n in parts[1:] if n not in starts]
        if missing:
            raise RuntimeError(f"no node of {', '.join(missing)} in the ONNX Runtime profile")
        bounds = [run["ts"]] + [starts[n] for n in parts[1:]] + [run["ts"] + run["dur"]]
        return [(b - a) / 1e3 for a, b in zip(bounds[:-1], bounds[1:])], [counts[n] for n in parts]

    def _node_times(self, events: list[dict]) -> tuple[NodeTime, ...]:
        """Every node that ran, at its fastest round."""
        best: dict[str, dict] = {}
        for event in events:
            if event["name"] not in best or event["dur"] < best[event["name"]]["dur"]:
                best[event["name"]] = event
        return tuple(
            NodeTime(name, e["args"]["op_name"], e["dur"] / 1e6,
                     tuple(profiled_shapes(e["args"], "input_type_shape")),
                     tuple(profiled_shapes(e["args"], "output_type_shape")),
                     self.inputs.get(name, "") in self.constants)
            for name, e in best.items()
        )


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every ``If`` branch in it, at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


@dataclass
class _Timed:
    """A built configuration, ready to time: ``run`` the engine, ``parts`` where it runs."""

    config: EngineConfig
    run: Callable[[], object]
    parts: _TorchParts | _OrtParts
    shape: ModelShape
    works: list[BlockWork]


VISITS = 6  # visits per configuration in one measurement (see the module docstring)


def measure_engines(
    configs: Sequence[EngineConfig], *, repeats: int | None = 20, budget_s: float | None = None, warmup: int = 2,
    device: str = "cpu", seed: int = 0, progress: Callable[[int, int], None] | None = None,
    max_repeats: int = 51, backend: str = "torch", visits: int = VISITS, reference: bool = False,
) -> list[EngineMeasurement]:
    """Time every configuration with the engine of ``backend``: ``repeats`` rounds each, or as many as
    fit an equal share of ``budget_s`` (between 5 and ``max_repeats``), in up to ``visits`` visits
    spread over the measurement. ``progress(done, total)`` counts configurations built, then visits.

    ``reference``: also time :data:`REFERENCE` (:data:`REFERENCE_CALLS` calls) after every visit;
    each measurement records the fastest (``reference_ms``), so that
    :meth:`EngineMeasurement.at_reference` can express it at one speed of the device. A shared
    machine drifts for minutes too: two passes of six configurations, a minute each, read whole
    models 16-34% apart, within ±8% at the reference's speed.
    """
    if (repeats is None) == (budget_s is None):
        raise ValueError("give either repeats or budget_s")
    if (repeats is not None and repeats < 1) or warmup < 1 or visits < 1:
        raise UsageError(f"repeats, warmup and visits must be >= 1, got {repeats}, {warmup} and {visits}")
    check_backend(backend, device, "measure")
    started = time.perf_counter()
    steps = len(configs) * (1 + visits)
    timed = []
    baseline = _build(REFERENCE, device, seed, backend) if reference else None
    for index, config in enumerate(configs):
        timed.append(_build(config, device, seed, backend))
        if progress is not None:
            progress(index + 1, steps)
    with torch.no_grad():
        round_s = []
        for t in timed:
            start = time.perf_counter()
            for _ in range(warmup):
                t.run()
            round_s.append(2 * (time.perf_counter() - start) / warmup)  # a timed-by-part and a plain run
        if repeats is None:
            share = (budget_s - (time.perf_counter() - started)) / len(configs)
            # a visit's untimed call costs half a round
            rounds = [int(min(max_repeats, max(5, share / max(r, 1e-9) - visits / 2))) for r in round_s]
        else:
            rounds = [repeats] * len(configs)
        model_ms: list[list[float]] = [[] for _ in configs]
        references: list[list[float]] = [[] for _ in configs]
        for visit in range(visits):
            for index, t in enumerate(timed):
                mine = rounds[index] // visits + (visit < rounds[index] % visits)
                if mine:
                    t.run()
                    for _ in range(mine):
                        t.parts.run()
                        model_ms[index].append(time_call_ms(t.run, device))
                    if baseline is not None:
                        baseline.run()
                        references[index] += [time_call_ms(baseline.run, device) for _ in range(REFERENCE_CALLS)]
                if progress is not None:
                    progress(len(configs) * (1 + visit) + index + 1, steps)
    results = []
    for t, times, count, seen in zip(timed, model_ms, rounds, references):
        parts, nodes = t.parts.finish(times)
        results.append(replace(_summarise(t, times, parts, count, backend, nodes),
                               reference_ms=fastest(seen) if seen else None))
    return results


def _build(config: EngineConfig, device: str, seed: int, backend: str) -> _Timed:
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
    if backend == "onnxruntime":
        ort = _OrtParts(model, timed_images, shape, torch.get_num_threads())
        return _Timed(config, ort.call, ort, shape, works)
    engine = convert(model, backend="torch")
    return _Timed(config, functools.partial(engine, timed_images), _TorchParts(engine, timed_images, device), shape,
                  works)


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


FAST_SHARE = 0.5  # the share of the rounds, fastest first, whose parts are averaged (see typical_parts)


def typical_parts(rounds: Sequence[Sequence[float]], model_ms: float) -> list[float]:
    """The parts of a run (stem, every block, head) in its fastest rounds: each part's mean over the
    fastest :data:`FAST_SHARE` of the rounds (by the sum of their parts), scaled so that the parts add
    up to ``model_ms``, the fastest plain run.

    Each part's own fastest round, taken on its own, added up to 0-10% less than the fastest whole
    round (a noisy part's minimum lies below its time in any one fast round), so blocks read faster
    than the models they make up. Recorded twice, six held-out configurations in two passes each:
    blocks within ±10% of themselves between passes 74% and 30% with the parts' own minima, 80% and
    54% this way.
    """
    if not rounds:
        raise ValueError("typical_parts: no rounds")
    kept = heapq.nsmallest(max(1, math.ceil(FAST_SHARE * len(rounds))), rounds, key=sum)
    means = [sum(values) / len(kept) for values in zip(*kept)]
    scale = model_ms / sum(means)
    return [ms * scale for ms in means]


def _summarise(t: _Timed, model_ms: list[float], rounds: list[list[float]], repeats: int, backend: str,
               nodes: tuple[NodeTime, ...]) -> EngineMeasurement:
    model = fastest(model_ms)
    parts = typical_parts(rounds, model)  # stem, block 0, ..., block n-1, head
    blocks = tuple(
        BlockMeasurement(b.name, b.stage, parts[1 + i], work, density_of(b, work))
        for i, (b, work) in enumerate(zip(t.shape.blocks, t.works))
    )
    log.debug("%s: %.3f ms", t.config.describe(), model)
    return EngineMeasurement(t.config, model, parts[0], parts[-1], blocks, t.shape, repeats, backend, nodes)


# A short fixed workload timed with every configuration (``measure_engines(reference=True)``): the
# device's speed at the time, so that configurations timed at different moments, and a validation
# and the calibration it checks, compare at one speed (other tenants, clocks and power change it).
REFERENCE = EngineConfig.build("laud_resnet50", 112, "static")
REFERENCE_CALLS = 2  # timed calls of the reference after each visit (after an untimed one)


def fastest_of(passes: Sequence[EngineMeasurement]) -> EngineMeasurement:
    """One configuration measured in several passes, as one measurement: the fastest of each time."""
    first = passes[0]
    if any(m.config != first.config for m in passes):
        raise ValueError("fastest_of: the passes measured different configurations")
    blocks = tuple(
        replace(block, ms=fastest([m.blocks[i].ms for m in passes])) for i, block in enumerate(first.blocks)
    )
    nodes: dict[str, NodeTime] = {}
    for node in (n for m in passes for n in m.nodes):
        if node.name not in nodes or node.seconds < nodes[node.name].seconds:
            nodes[node.name] = node
    return replace(
        first, model_ms=fastest([m.model_ms for m in passes]), stem_ms=fastest([m.stem_ms for m in passes]),
        head_ms=fastest([m.head_ms for m in passes]), blocks=blocks, repeats=sum(m.repeats for m in passes),
        nodes=tuple(nodes.values()),
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
