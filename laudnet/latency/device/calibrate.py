"""Calibrating the latency predictor on this device: the engine's operators and blocks timed, a fit.

``calibrate`` (``laudnet calibrate``) measures one engine backend (``torch`` or ``onnxruntime``, the
CPU engine :func:`laudnet.sparse.convert` picks by default), within a time budget and at a fixed
thread count:

1. **Operators**: for ``onnxruntime``, every node of the fitting configurations' graphs that is a
   convolution, product, gather, scatter, pooling or element-wise pass, timed where it ran by ONNX
   Runtime's profiler (:func:`node_operation` reads its sizes from the profile). For ``torch``,
   the primitive operations of the sparse engine (:mod:`laudnet.sparse.plan`) over
   a spread of shapes drawn from the plans of the fitting configurations (:data:`FIT_CONFIGS`):
   dense 1×1 (products on rows), 3×3 and grouped convolutions, products on gathered windows at
   several densities and granularities, channel-sliced weights, gathers, scatter-adds, maskers,
   pooling, element-wise passes. Each timed call starts with its input in cache and its weights and
   output buffer out of it, as in a forward pass (:func:`time_operators`); calls are timed in
   interleaved rounds and the fastest kept (:func:`laudnet.timing.fastest`).
2. **Blocks where they run**: the fitting configurations, whole models timed block by block
   (:mod:`.measure`), for what no single operator shows: the cost of a block and of a model call
   (Python for torch, the session and small index nodes for ONNX Runtime), and caches as a real
   forward pass leaves them. A reference workload timed with every configuration puts them all at
   the fastest speed the device showed (:meth:`~.measure.EngineMeasurement.at_reference`), which
   the profile records and a validation measures at.

Both backends are priced from one plan (:func:`laudnet.sparse.plan.block_ops`): the torch program's
operations, for ONNX Runtime as its graph (:mod:`laudnet.sparse.lowering`) runs them; the small
index nodes of its blocks are priced in the block costs.

Then it fits, in two steps: the analytic hardware model's parameters (clock, DRAM bandwidth, L2
ratio, launch time; the PEs are the threads) to the operator timings, by least squares on the log
of the time; and a correction per operator kind (:mod:`.costs`): non-negative weights of a few
time features, by least squares on relative errors over operators and blocks together, pulled
(ridge) towards the analytic model itself so that a kind with little data stays analytic.

The result is a profile (a :class:`Hardware` with ``engine`` costs) for this device and this
thread count, written as YAML with a record of how it was made.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import least_squares, nnls

from ...dynamic.spec import StageSpec
from ...errors import UsageError
from ...models.resnet import LaudBottleneck
from ...models.structure import BlockShape, model_shape
from ...sparse.kernels import TorchKernels
from ...sparse.kernels import conv_kind
from ...sparse.plan import CONV_KINDS, EngineOp, block_calls, block_ops, expected_work, head_ops, stem_ops
from ..calibrated import pricing
from ..costs import FEATURES, OP_KINDS, OVERHEAD_KINDS, EngineCosts, check_backend, kind_features, prior_coefficients
from ..hardware import Hardware
from ...timing import fastest, time_call_ms
from .measure import EngineConfig, EngineMeasurement, NodeTime, measure_engines, measuring

log = logging.getLogger(__name__)

# Configurations the calibration measures: their operators are benchmarked and their blocks timed
# where they run. Validation holds out every configuration listed here (see ``validate``).
FIT_CONFIGS: tuple[EngineConfig, ...] = (
    EngineConfig.build("laud_resnet50", 224, "static"),
    EngineConfig.build("laud_resnet50", 224, "spatial", "2", density=0.5),
    EngineConfig.build("laud_resnet50", 224, "channel", channel_granularity="4", density=0.5),
    EngineConfig.build("laud_resnet50", 224, "layer", density=0.5),
    EngineConfig.build("laud_resnet50", 224, "both", "4-4-2-1", "8", density=0.6),
    EngineConfig.build("laud_resnet50", 160, "spatial", "1", density=0.3),
    EngineConfig.build("laud_regnet_y_400mf", 192, "static"),
    EngineConfig.build("laud_regnet_y_400mf", 224, "spatial", "1", density=0.5),
    EngineConfig.build("laud_regnet_y_400mf", 224, "layer", density=0.5),
    EngineConfig.build("laud_regnet_y_800mf", 224, "static"),
    EngineConfig.build("laud_regnet_y_800mf", 224, "channel", channel_granularity="16", density=0.4),
    EngineConfig.build("laud_regnet_y_800mf", 192, "both", "2", "16", density=0.7),
)
# Operator shapes come from these configurations' plans, at these densities as well.
OPERATOR_DENSITIES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.8)
OPERATORS_PER_KIND = 80
BUDGET_SHARE_OPERATORS = 0.5
MIN_REPEATS, MAX_REPEATS = 5, 51
# Parameters of the analytic model fitted on the operators (log-space least squares), with bounds.
FITTED_PARAMETERS: dict[str, tuple[float, float]] = {
    "frequency_hz": (1e7, 1e12),
    "dram_bandwidth": (1e7, 1e14),
    "l2_bandwidth_ratio": (0.1, 1e3),
    "launch_time_s": (1e-8, 1e-2),
}
RIDGE = 1.0


@dataclass(frozen=True)
class Sample:
    """One measured time and what ran in it: engine operations (with counts), calls priced as
    overheads (``calls``: overhead kind → count), and whether the engine's Python ran the operations
    (``in_engine``: each pays the ``glue``) or a micro-benchmark did."""

    label: str
    seconds: float
    ops: tuple[EngineOp, ...]
    calls: tuple[tuple[str, float], ...] = ()
    in_engine: bool = False


@dataclass(frozen=True)
class KindFit:
    """How well the analytic model alone and the calibrated profile describe one operator kind:
    median absolute relative error over its operator benchmarks."""

    kind: str
    samples: int
    analytic_error: float
    calibrated_error: float


@dataclass(frozen=True)
class Calibration:
    """A fitted profile, the samples it was fitted on, and how well it fits them."""

    hardware: Hardware
    operator_samples: tuple[Sample, ...]
    block_samples: tuple[Sample, ...]
    kinds: tuple[KindFit, ...]
    block_error: float
    record: dict


# ---------------------------------------------------------------------------- operators


@dataclass
class _Runner:
    """A micro-benchmark: ``call()`` runs the operation; ``hot`` are the activations it reads, which
    in a forward pass the operation before has just written."""

    op: EngineOp
    call: Callable[[], object]
    hot: tuple[torch.Tensor, ...]


def operator_cases(
    configs: Sequence[EngineConfig] = FIT_CONFIGS, per_kind: int = OPERATORS_PER_KIND, seed: int = 0,
) -> list[tuple[EngineOp, BlockShape | None, StageSpec | None]]:
    """Operations to benchmark: those of the configurations' plans at several densities, at most
    ``per_kind`` per kind (the largest half and a spread of the rest); maskers with the block and
    spec that make them."""
    found: dict[tuple, tuple[EngineOp, BlockShape | None, StageSpec | None]] = {}
    for config in configs:
        shape = model_shape(config.model, config.input_size)
        for op in stem_ops(shape, config.batch) + head_ops(shape, config.batch):
            found.setdefault((op.kind, op.dims), (op, None, None))
        for block in shape.blocks:
            spec = config.spec.stages[block.stage]
            for density in OPERATOR_DENSITIES + (config.density,):
                work = expected_work(block, spec, config.batch, cells=density, channel=density)
                for op in block_ops(block, spec, work):
                    found.setdefault((op.kind, op.dims), (op, block, spec))
    rng = np.random.default_rng(seed)
    chosen = []
    for kind in OP_KINDS:
        cases = sorted((c for c in found.values() if c[0].kind == kind), key=lambda c: _size(c[0]))
        if len(cases) > per_kind:
            # The largest half (they make most of a block's time), the rest spread evenly over the sizes.
            large, rest = cases[len(cases) - per_kind // 2:], cases[: len(cases) - per_kind // 2]
            edges = np.linspace(0, len(rest), per_kind - len(large) + 1).astype(int)
            cases = [rest[int(rng.integers(lo, hi))] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo] + large
        chosen.extend(cases)
    return chosen


def _size(op: EngineOp) -> float:
    data = op.traffic
    return float(op.macs + data.inputs + data.weights + data.outputs)


def make_runner(op: EngineOp, block: BlockShape | None, spec: StageSpec | None, device: str,
                generator: torch.Generator) -> _Runner:
    """A micro-benchmark running ``op`` with the engine's own kernels (:class:`TorchKernels`) on random data."""
    k = TorchKernels

    def randn(*shape, channels_last: bool = False) -> torch.Tensor:
        t = torch.randn(*shape, generator=generator).to(device)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    def rows(total: int, count: int) -> torch.Tensor:
        return torch.randperm(total, generator=generator)[:count].sort().values.to(device)

    kind, d = op.kind, op.dims
    if kind == "matmul":
        m, n_in, n = d
        a, w, bias = randn(m, n_in), randn(n_in, n), randn(n)
        return _Runner(op, lambda: k.addmm(op.role, bias, a, w), (a,))
    if kind == "grouped_matmul":
        g, m, n_in, n = d
        a, w, bias = randn(g, m, n_in), randn(g, n_in, n), randn(g, 1, n)
        return _Runner(op, lambda: k.baddbmm(op.role, bias, a, w), (a,))
    if kind in CONV_KINDS:
        b, cin, cout, h, w_, kernel, stride, groups = d
        x, bias = randn(b, cin, h, w_, channels_last=True), randn(cout)
        w = randn(cout, cin // groups, kernel, kernel, channels_last=True)
        return _Runner(op, lambda: k.conv2d(op.role, x, w, bias, stride, kernel // 2, groups), (x,))
    if kind in ("gather", "slice"):  # a parameter (slice) is cold, an activation (gather) was just written
        count, width = d
        src, index = randn(max(2 * count, 1), width), rows(max(2 * count, 1), count)
        return _Runner(op, lambda: k.index_select(op.role, src, 0, index), (index, src) if kind == "gather" else (index,))
    if kind == "scatter":
        count, width = d
        dst, values, index = randn(max(2 * count, 1), width), randn(count, width), rows(max(2 * count, 1), count)
        return _Runner(op, lambda: k.index_add_(op.role, dst, index, values), (dst, values, index))
    if kind == "elementwise":
        x = randn(max(d[0], 1))
        return _Runner(op, lambda: k.relu_(op.role, x), (x,))
    if kind == "reduce":
        n_in, n_out = d
        x = randn(1, n_in // n_out, n_out)
        return _Runner(op, lambda: k.mean(op.role, x, 1), (x,))
    if kind == "max_pool":
        x = randn(*d, channels_last=True)
        return _Runner(op, lambda: k.max_pool2d(op.role, x), (x,))
    if kind in ("spatial_masker", "channel_masker"):
        module = LaudBottleneck(block.in_channels, block.width, block.stride, False, name="bench", stage=0, spec=spec,
                                masker_layers=block.masker_layers, masker_reduction=block.masker_reduction)
        module = module.to(device).eval()
        if kind == "spatial_masker":
            module.masker_channel = None
        else:
            module.masker_spatial = None
        x = randn(d[0], block.in_channels, *block.in_hw, channels_last=True)
        return _Runner(op, lambda: module.compute_masks(x), (x,))
    raise ValueError(f"unknown operation kind {kind!r}")


def flush_buffer(device: str) -> torch.Tensor:
    """A buffer four times the size of a core's private cache (CPU L2, GPU L2): writing it evicts
    the data an operation left there, not the code and small state a forward pass keeps warm."""
    if torch.device(device).type == "cuda":
        size = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    else:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE") if "SC_LEVEL2_CACHE_SIZE" in os.sysconf_names else 0
    return torch.empty(4 * max(size, 1 << 20) // 4, device=device)


def time_operators(
    runners: Sequence[_Runner], budget_s: float, device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Seconds of each runner, fastest of interleaved rounds: as many as fit ``budget_s``, between
    :data:`MIN_REPEATS` and :data:`MAX_REPEATS`, after a warm-up round.

    Before each timed call the private cache is flushed (:func:`flush_buffer`) and the runner's
    activations rewritten, so it starts as in a forward pass: its input in cache (the previous
    operation wrote it), its weights and output buffer not.
    """
    flush = flush_buffer(device)

    def timed(runner: _Runner) -> float:
        flush.fill_(1.0)
        for tensor in runner.hot:
            tensor.add_(0)
        return time_call_ms(runner.call, device) / 1e3

    with torch.no_grad():
        start = time.perf_counter()
        for runner in runners:
            runner.call()
            timed(runner)
        round_s = (time.perf_counter() - start) / 1.5  # a round makes one call per runner, not two
        repeats = int(min(MAX_REPEATS, max(MIN_REPEATS, budget_s / max(round_s, 1e-9))))
        samples: list[list[float]] = [[] for _ in runners]
        for done in range(repeats):
            for values, runner in zip(samples, runners):
                values.append(timed(runner))
            if progress is not None:
                progress(done + 1, repeats)
    return [fastest(values) for values in samples]


# Smaller gathers, scatters and element-wise nodes move index tables and shapes, not activations.
MIN_ROW_WIDTH, MIN_ELEMENTWISE = 16, 1024


def node_operation(node: NodeTime) -> EngineOp | None:
    """The engine operation an ONNX Runtime node ran, from the shapes its profile records: a
    convolution, a product on rows (``Gemm``) or on grouped rows (batched ``MatMul``), a gather of
    rows (``slice`` when it gathers weights), a scatter of rows, max pooling, a mean or an
    element-wise pass. ``None`` for the small nodes (index arithmetic, shapes, transposes,
    control flow), which the block's cost absorbs."""
    op, inputs, outputs = node.op_name, node.inputs, node.outputs
    if not inputs or not outputs:
        return None
    x, y = inputs[0], outputs[0]
    if op in ("Conv", "FusedConv") and len(inputs) > 1 and len(x) == len(inputs[1]) == 4:
        weight = inputs[1]
        groups = max(x[1] // weight[1], 1)
        stride = max(round(x[2] / y[2]), 1)
        return EngineOp(conv_kind(groups), "node", (x[0], x[1], y[1], x[2], x[3], weight[2], stride, groups))
    if op in ("Gemm", "FusedGemm", "MatMul", "FusedMatMul") and len(x) == len(y) == 2:
        return EngineOp("matmul", "node", (x[0], x[1], y[1]))
    if op in ("MatMul", "FusedMatMul") and len(x) == len(y) == 3 and x[0] > 1:
        return EngineOp("grouped_matmul", "node", (x[0], x[1], x[2], y[2]))
    if op == "MaxPool" and len(x) == 4:
        return EngineOp("max_pool", "node", x)
    rows, width = (y[0], math.prod(y[1:])) if len(y) >= 2 else (0, 0)
    if op == "Gather" and rows and width >= MIN_ROW_WIDTH:
        return EngineOp("slice" if node.constant_input else "gather", "node", (rows, width))
    if op == "ScatterND" and len(inputs) == 3 and len(inputs[2]) >= 2 and math.prod(inputs[2][1:]) >= MIN_ROW_WIDTH:
        return EngineOp("scatter", "node", (inputs[2][0], math.prod(inputs[2][1:])))
    if op in ("ReduceMean", "GlobalAveragePool"):
        return EngineOp("reduce", "node", (math.prod(x), math.prod(y)))
    if op in ("Relu", "Add", "Sum") and math.prod(y) >= MIN_ELEMENTWISE:
        return EngineOp("elementwise", "node", (math.prod(y),))
    return None


def node_samples(measurements: Sequence[EngineMeasurement]) -> tuple[Sample, ...]:
    """One operator sample per distinct operation (kind and sizes) the measured graphs ran: the
    fastest node that ran it."""
    found: dict[tuple, Sample] = {}
    for measurement in measurements:
        for node in measurement.nodes:
            operation = node_operation(node)
            if operation is None or node.seconds <= 0:
                continue
            key = (operation.kind, operation.dims)
            if key not in found or node.seconds < found[key].seconds:
                found[key] = Sample(f"{operation.kind} {operation.dims}", node.seconds, (operation,))
    return tuple(found.values())


# ---------------------------------------------------------------------------- fitting


def fit_hardware(base: Hardware, samples: Sequence[Sample]) -> Hardware:
    """The analytic model's parameters (:data:`FITTED_PARAMETERS`) that best explain the
    single-operator ``samples``: least squares on log time, from ``base``'s values."""
    ops = [s.ops[0] for s in samples]
    measured = np.log([s.seconds for s in samples])
    names = list(FITTED_PARAMETERS)
    low = np.log([FITTED_PARAMETERS[n][0] for n in names])
    high = np.log([FITTED_PARAMETERS[n][1] for n in names])

    def hardware(x: np.ndarray) -> Hardware:
        return dataclasses.replace(base, engine=None, **{n: float(np.exp(v)) for n, v in zip(names, x)})

    def residuals(x: np.ndarray) -> np.ndarray:
        hw = hardware(x)
        return np.log([pricing.analytic_seconds(hw, op) for op in ops]) - measured

    start = np.clip(np.log([getattr(base, n) for n in names]), low + 1e-9, high - 1e-9)
    result = least_squares(residuals, start, bounds=(low, high), x_scale=1.0, diff_step=1e-4, max_nfev=400)
    return dataclasses.replace(hardware(result.x), engine=base.engine)


# The fit's unknowns: one weight per (kind, feature), and each one's column in a design row.
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (kind, name) for kind in OP_KINDS + OVERHEAD_KINDS for name in kind_features(kind)
)
_COLUMN_INDEX: dict[tuple[str, str], int] = {column: i for i, column in enumerate(COLUMNS)}


def design_row(hw: Hardware, sample: Sample) -> np.ndarray:
    """The features of everything that ran in ``sample``, in seconds, one column per (kind, feature)."""
    columns = _COLUMN_INDEX
    row = np.zeros(len(columns))
    for op in sample.ops:
        features = pricing.op_features(hw, op)
        for name, value in zip(FEATURES, features):
            row[columns[(op.kind, name)]] += op.count * value
    for kind, count in sample.calls:
        row[columns[(kind, "launch")]] += count * hw.launch_time_s
    if sample.in_engine:
        row[columns[("glue", "launch")]] += sum(op.count for op in sample.ops) * hw.launch_time_s
    return row


def fit_costs(hw: Hardware, samples: Sequence[Sample], device: str, threads: int, backend: str = "torch",
              ridge: float = RIDGE) -> EngineCosts:
    """Non-negative weights of every kind's features that best explain ``samples`` (relative least
    squares), pulled towards the analytic model (:func:`~laudnet.latency.costs.prior_coefficients`)."""
    columns = COLUMNS
    matrix = np.array([design_row(hw, s) for s in samples]) / np.array([[s.seconds] for s in samples])
    prior = np.array([prior_coefficients(kind)[name] for kind, name in columns])
    norms = np.linalg.norm(matrix, axis=0)
    used = norms > 0
    scaled = matrix[:, used] / norms[used]
    target = np.ones(len(samples))
    # A column scaled to unit norm has a root-mean-square of 1/sqrt(n) per sample: the prior weighs
    # as much as ``ridge`` samples would.
    strength = np.sqrt(ridge / len(samples))
    system = np.vstack([scaled, strength * np.eye(int(used.sum()))])
    rhs = np.concatenate([target, strength * prior[used] * norms[used]])
    solution, _ = nnls(system, rhs, maxiter=50 * system.shape[1])
    weights = prior.copy()
    weights[used] = solution / norms[used]
    table: dict[str, dict[str, float]] = {}
    for (kind, name), value in zip(columns, weights):
        table.setdefault(kind, {})[name] = float(value)
    return EngineCosts.build(device, threads, table, backend)


def predicted_seconds(hw: Hardware, sample: Sample) -> float:
    """What a calibrated ``hw`` predicts for ``sample``."""
    weights = np.array([hw.engine.of(kind)[name] for kind, name in COLUMNS])
    return float(design_row(hw, sample) @ weights)


# ---------------------------------------------------------------------------- the whole calibration


def initial_hardware(device: str, threads: int) -> Hardware:
    """A starting point for the fit: PEs are the threads (CPU) or the SMs (CUDA), SIMD FP32 lanes."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return Hardware(_device_name(device), props.multi_processor_count, 128, 1.5e9, 1e12, launch_time_s=5e-6,
                        engine=EngineCosts(device, threads))
    lanes = 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
    return Hardware(_device_name(device), threads, lanes, 2.5e9, 20e9, transaction_words=16, launch_time_s=5e-6,
                    engine=EngineCosts(device, threads))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device()).replace(" ", "-").lower()
    return (platform.processor() or platform.machine() or "cpu").replace(" ", "-").lower()


def default_backend(device: str) -> str:
    """The engine a profile for ``device`` prices unless told: what :func:`laudnet.sparse.convert`
    runs there by default on the CPU (ONNX Runtime), the torch engine on a GPU."""
    return "onnxruntime" if device == "cpu" else "torch"


def calibrate(
    device: str = "cpu", *, threads: int | None = None, budget_s: float = 300.0, name: str | None = None,
    configs: Sequence[EngineConfig] = FIT_CONFIGS, seed: int = 0, backend: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Calibration:
    """Benchmark the engine's operators and blocks on ``device`` and fit a profile.

    ``backend``: the engine to price (default :func:`default_backend`). ``threads`` (default:
    torch's current count) is fixed for the whole run and recorded; ``budget_s`` bounds the
    measurements (at least :data:`MIN_REPEATS` rounds are always made). ``progress(stage, done,
    total)`` follows the rounds of each stage (``operators`` for torch, ``blocks``).
    """
    if device not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda: no CUDA device is available here; calibrate with --device cpu")
    if budget_s <= 0:
        raise UsageError(f"budget must be positive, got {budget_s} s")
    backend = backend or default_backend(device)
    check_backend(backend, device, "calibrate")
    threads = threads or torch.get_num_threads()
    started = time.perf_counter()

    def stage(label: str) -> Callable[[int, int], None] | None:
        return None if progress is None else lambda done, total: progress(label, done, total)

    with measuring(threads) as session:
        operator_samples: tuple[Sample, ...] = ()
        if backend == "torch":  # ONNX Runtime's operators are timed inside the block measurements
            generator = torch.Generator().manual_seed(seed)
            runners = [make_runner(op, block, spec, device, generator)
                       for op, block, spec in operator_cases(configs, seed=seed)]
            seconds = time_operators(runners, BUDGET_SHARE_OPERATORS * budget_s, device, stage("operators"))
            operator_samples = tuple(Sample(f"{r.op.kind} {r.op.dims}", s, (r.op,)) for r, s in zip(runners, seconds))
            del runners
        remaining = max(budget_s - (time.perf_counter() - started), 0.0)
        measurements = measure_engines(configs, repeats=None, budget_s=remaining, device=device, seed=seed,
                                       progress=stage("blocks"), backend=backend, reference=True)
    # Every configuration at the device's fastest speed seen, which the profile then predicts.
    reference = fastest([m.reference_ms for m in measurements])
    measurements = [m.at_reference(reference) for m in measurements]
    operator_samples += node_samples(measurements)
    block_samples = tuple(s for m in measurements for s in measurement_samples(m))
    base = initial_hardware(device, threads)
    if name:
        base = dataclasses.replace(base, name=name)
    hw = fit_hardware(base, operator_samples)
    hw = dataclasses.replace(hw, engine=fit_costs(hw, operator_samples + block_samples, device, threads, backend))
    kinds = tuple(_kind_fit(hw, kind, operator_samples) for kind in OP_KINDS)
    block_error = _median_error(hw, [s for s in block_samples if s.label.startswith("block")])
    record = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "processor": _device_name(device),
        "threads": threads,
        "backend": backend,
        "torch": str(torch.__version__),
        **({"onnxruntime": _onnxruntime_version()} if backend == "onnxruntime" else {}),
        "budget_s": round(budget_s, 1),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "load_before": list(session.load_before),
        "reference_ms": round(reference, 3),
        "reference_backend": backend,
        "load_after": list(session.load_after),
        "operator_benchmarks": len(operator_samples),
        "block_measurements": len(block_samples),
        "fitted_on": [c.describe() for c in configs],
        "median_error": {k.kind: round(k.calibrated_error, 4) for k in kinds} | {"blocks": round(block_error, 4)},
    }
    return Calibration(hw, operator_samples, block_samples, kinds, block_error, record)


def _onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def measurement_samples(measurement: EngineMeasurement) -> list[Sample]:
    """Samples of one model measurement: every block, the stem (with the model call) and the head."""
    config, shape, backend = measurement.config, measurement.shape, measurement.backend
    samples = []
    for block, b in zip(shape.blocks, measurement.blocks):
        spec = config.spec.stages[block.stage]
        samples.append(Sample(f"block {config.describe()} {b.name}", b.ms / 1e3,
                              block_ops(block, spec, b.work, backend), block_calls(block, spec, b.work, backend), True))
    samples.append(Sample(f"stem {config.describe()}", measurement.stem_ms / 1e3,
                          stem_ops(shape, config.batch, backend), (("model", 1.0),), True))
    samples.append(Sample(f"head {config.describe()}", measurement.head_ms / 1e3, head_ops(shape, config.batch),
                          (), True))
    return samples


def _median_error(hw: Hardware, samples: Sequence[Sample]) -> float:
    if not samples:
        return float("nan")
    return float(np.median([abs(predicted_seconds(hw, s) / s.seconds - 1) for s in samples]))


def _kind_fit(hw: Hardware, kind: str, samples: Sequence[Sample]) -> KindFit:
    mine = [s for s in samples if s.ops[0].kind == kind]
    analytic = [abs(pricing.analytic_seconds(hw, s.ops[0]) / s.seconds - 1) for s in mine]
    return KindFit(kind, len(mine), float(np.median(analytic)) if mine else float("nan"), _median_error(hw, mine))
