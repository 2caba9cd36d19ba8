"""Validating a calibrated profile: predicted against measured engine latency, on held-out configurations.

``validate`` (``laudnet validate-latency``) times the sparse engine (:mod:`.measure`) on
configurations the calibration never saw (:data:`HELD_OUT`: other input sizes, densities,
granularities and modes, RegNetY as well as ResNet; any configuration the profile was fitted on is
refused), predicts each of them with the profile from the densities the masks actually had
(as ``laudnet latency --stats`` would), and reports per block and per model the relative error
``predicted / measured - 1``: its distribution, the fraction of blocks within ±10%, the
whole-model errors, and Spearman's rank correlation of predicted and measured block latencies.

Every configuration is measured in two passes, minutes apart, and the report states how well the
device agrees with itself (``repeat_within_10``, ``repeat_median``): a prediction cannot be checked
more finely than the device repeats its own timings. Measurements are compared at the speed the
profile was calibrated at: a reference workload timed with every configuration scales it
(:meth:`~.measure.EngineMeasurement.at_reference`); ``speed_ratio`` says how far the device's speed
was from that, and ``within_10_as_measured`` what the comparison reads unscaled.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.stats import spearmanr

from ...errors import UsageError
from ...io import atomic_open, write_text
from ...reporting import dumps
from ..hardware import Hardware, HardwareLike, get_hardware, load_record
from ..prediction import predict
from ..summary import RunSummary
from ...timing import fastest
from .measure import EngineConfig, EngineMeasurement, fastest_of, measure_engines, measuring

log = logging.getLogger(__name__)

PASSES = 2

HELD_OUT: tuple[EngineConfig, ...] = (
    EngineConfig.build("laud_resnet50", 224, "spatial", "1", density=0.45),
    EngineConfig.build("laud_resnet50", 224, "spatial", "4-4-2-1", density=0.35),
    EngineConfig.build("laud_resnet50", 224, "spatial", "7", density=0.65),
    EngineConfig.build("laud_resnet50", 224, "channel", channel_granularity="2", density=0.65),
    EngineConfig.build("laud_resnet50", 224, "channel", channel_granularity="16", density=0.3),
    EngineConfig.build("laud_resnet50", 224, "layer", density=0.75),
    EngineConfig.build("laud_resnet50", 224, "both", "2", "16", density=0.45),
    EngineConfig.build("laud_resnet50", (256, 320), "static"),
    EngineConfig.build("laud_resnet50", (256, 320), "spatial-spatial-channel-channel", "4", "8", density=0.55),
    EngineConfig.build("laud_resnet101", 224, "spatial", "2", density=0.25),
    EngineConfig.build("laud_regnet_y_400mf", 224, "static"),
    EngineConfig.build("laud_regnet_y_400mf", 224, "spatial", "2", density=0.4),
    EngineConfig.build("laud_regnet_y_400mf", 224, "channel", channel_granularity="8", density=0.55),
    EngineConfig.build("laud_regnet_y_800mf", 224, "spatial", "4", density=0.65),
    EngineConfig.build("laud_regnet_y_800mf", 224, "layer", density=0.35),
    EngineConfig.build("laud_regnet_y_800mf", (256, 320), "both", "1", "16", density=0.3),
)


class _Compared:
    """A predicted and a measured time, and the relative error ``predicted / measured - 1``."""

    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1.0


@dataclass(frozen=True)
class BlockComparison(_Compared):
    """One block of one configuration: predicted and measured ms, relative error."""

    config: str
    block: str
    mode: str
    predicted_ms: float
    measured_ms: float


@dataclass(frozen=True)
class ModelComparison(_Compared):
    """One whole configuration: predicted and measured ms, relative error."""

    config: str
    model: str
    predicted_ms: float
    measured_ms: float


@dataclass(frozen=True)
class ValidationReport:
    """Predicted against measured latency of the engine on held-out configurations.

    ``error_quantiles``: quantiles (5, 25, 50, 75, 95 %) of the per-block relative error;
    ``within_10``: fraction of blocks within ±10%; ``spearman``: rank correlation of predicted and
    measured block latencies; ``model_errors``: whole-model relative error per configuration;
    ``repeat_within_10`` and ``repeat_median``: the fraction of blocks whose two measurement
    passes agree within ±10%, and their median relative difference (the device's own noise);
    ``speed_ratio``: the reference workload's time now over its time at calibration (``None``
    when the profile has no record of it for its backend; then the measurements are compared at the
    fastest speed this validation saw): far from 1, the device is not the one calibrated, or runs
    slower; ``within_10_as_measured``: ``within_10`` of the unscaled measurements.
    """

    hardware: str
    device: str
    threads: int
    backend: str
    repeats: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    fitted_on: tuple[str, ...]
    blocks: tuple[BlockComparison, ...]
    models: tuple[ModelComparison, ...]
    within_10: float
    median_abs_error: float
    error_quantiles: dict[str, float]
    spearman: float
    model_errors: dict[str, float]
    repeat_within_10: float
    repeat_median: float
    speed_ratio: float | None
    within_10_as_measured: float


def held_out(configs: Sequence[EngineConfig], fitted_on: Sequence[str]) -> list[EngineConfig]:
    """``configs``, checked to share nothing with the configurations a profile was fitted on."""
    overlap = sorted({c.describe() for c in configs} & set(fitted_on))
    if overlap:
        raise UsageError(f"validation configurations were used for fitting: {'; '.join(overlap)}")
    return list(configs)


def validate(
    hardware: HardwareLike, configs: Sequence[EngineConfig] = HELD_OUT, *, repeats: int | None = None,
    budget_s: float = 240.0, seed: int = 1, progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Measure ``configs`` with the engine and compare with ``hardware``'s predictions.

    ``hardware`` must be a calibrated profile; it is measured with the profile's device, thread
    count and engine backend, in :data:`PASSES` passes of ``repeats`` rounds each, or of as many as fit
    ``budget_s`` in all. ``progress(done, total)`` counts the steps of the measurements (configurations
    built, visits made).
    """
    hw = get_hardware(hardware)
    if not hw.calibrated:
        raise UsageError(
            f"hardware {hw.name} is not a calibrated profile (it has no engine costs): run "
            "`laudnet latency calibrate -o my-device.yaml` and validate that file"
        )
    record = load_record(hardware) if not isinstance(hardware, Hardware) else {}
    fitted_on = tuple(record.get("fitted_on", ()))
    configs = held_out(configs, fitted_on)
    measured = []
    with measuring(hw.engine.threads) as session:
        for index in range(PASSES):
            measured.append(measure_engines(
                configs, repeats=repeats, budget_s=None if repeats else budget_s / PASSES, device=hw.engine.device,
                backend=hw.engine.backend, seed=seed, reference=True,
                progress=None if progress is None else lambda i, n, index=index: progress(index * n + i, PASSES * n),
            ))
    fastest_reference = fastest([m.reference_ms for one in measured for m in one])
    calibrated = record.get("reference_ms") if record.get("reference_backend") == hw.engine.backend else None
    passes = [[m.at_reference(calibrated or fastest_reference) for m in one] for one in measured]
    measurements = [fastest_of(same) for same in zip(*passes)]
    unscaled_ms = [b.ms for m in map(fastest_of, zip(*measured)) for b in m.blocks]
    repeat = np.array([
        a.ms / b.ms - 1 for first, second in zip(passes[0], passes[1]) for a, b in zip(first.blocks, second.blocks)
    ])
    blocks, models = [], []
    for m in measurements:
        b, model = compare(hw, m)
        blocks.extend(b)
        models.append(model)
    errors = np.array([b.error for b in blocks])
    quantiles = {f"p{q}": float(np.percentile(errors, q)) for q in (5, 25, 50, 75, 95)}
    rank = spearmanr([b.predicted_ms for b in blocks], [b.measured_ms for b in blocks]).statistic
    return ValidationReport(
        hardware=hw.name,
        device=hw.engine.device,
        threads=hw.engine.threads,
        backend=hw.engine.backend,
        repeats=min(m.repeats for m in measurements),
        load_before=session.load_before,
        load_after=session.load_after,
        fitted_on=fitted_on,
        blocks=tuple(blocks),
        models=tuple(models),
        within_10=float(np.mean(np.abs(errors) <= 0.10)),
        median_abs_error=float(np.median(np.abs(errors))),
        error_quantiles=quantiles,
        spearman=float(rank),
        model_errors={m.config: m.error for m in models},
        repeat_within_10=float(np.mean(np.abs(repeat) <= 0.10)),
        repeat_median=float(np.median(np.abs(repeat))),
        speed_ratio=fastest_reference / calibrated if calibrated else None,
        # the same predictions (from the same masks' densities) against the unscaled times
        within_10_as_measured=float(np.mean([
            abs(b.predicted_ms / ms - 1) <= 0.10 for b, ms in zip(blocks, unscaled_ms, strict=True)])),
    )


def compare(hw: Hardware, measurement: EngineMeasurement) -> tuple[list[BlockComparison], ModelComparison]:
    """Predictions for one measured configuration, from the densities its masks had."""
    config = measurement.config
    summary = RunSummary(
        path=f"<measured {config.describe()}>",
        densities={b.name: b.density for b in measurement.blocks},
        model=config.model,
        spec=config.spec,
        input_size=config.input_size,
    )
    report = predict(config.model, hw, stats=summary, batch=config.batch, input_size=config.input_size)
    label = config.describe()
    blocks = [
        BlockComparison(label, b.name, config.spec.stages[b.stage].mode, predicted.total_ms, b.ms)
        for b, predicted in zip(measurement.blocks, report.blocks)
    ]
    return blocks, ModelComparison(label, config.model, report.model_ms, measurement.model_ms)


def write_report(report: ValidationReport, folder: str | os.PathLike) -> tuple[Path, Path]:
    """``validation.json`` (every comparison and the statistics) and ``validation.png`` (predicted
    against measured, per block and per model), both written atomically."""
    folder = Path(folder)
    json_path, png_path = folder / "validation.json", folder / "validation.png"
    payload = dumps(report)
    write_text(json_path, payload)
    with atomic_open(png_path, "wb") as handle:
        handle.write(scatter_png(report))
    return json_path, png_path


def scatter_png(report: ValidationReport) -> bytes:
    """A log-log scatter of predicted against measured ms: blocks by mode, whole models, ±10% lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    modes = sorted({b.mode for b in report.blocks})
    for mode in modes:
        mine = [b for b in report.blocks if b.mode == mode]
        left.scatter([b.measured_ms for b in mine], [b.predicted_ms for b in mine], s=10, alpha=0.7, label=mode)
    right.scatter([m.measured_ms for m in report.models], [m.predicted_ms for m in report.models], s=24)
    for axes, values, title in (
        (left, [b.measured_ms for b in report.blocks] + [b.predicted_ms for b in report.blocks],
         f"blocks: {100 * report.within_10:.0f}% within ±10%, Spearman {report.spearman:.3f}"),
        (right, [m.measured_ms for m in report.models] + [m.predicted_ms for m in report.models],
         "whole models"),
    ):
        low, high = min(values) / 1.3, max(values) * 1.3
        line = np.geomspace(low, high, 10)
        axes.plot(line, line, color="black", linewidth=1)
        axes.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.2, label="±10%")
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis in (axes.xaxis, axes.yaxis):  # plain numbers at 1, 2, 5 per decade, no crowded minor labels
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_xlabel("measured ms")
        axes.set_ylabel("predicted ms")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    figure.suptitle(f"{report.hardware}: {report.device}, {report.backend} engine, {report.threads} threads, "
                    "held-out configurations")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
