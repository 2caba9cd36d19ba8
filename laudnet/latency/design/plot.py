"""Latency against gate density, per dynamic mode: the curves ``laudnet latency plot`` draws."""

from __future__ import annotations

import io
from dataclasses import dataclass

from ...dynamic.spec import MODES, PerStage
from ...errors import UsageError
from ...models.structure import InputSize
from ..prediction import LatencyLike, latency_model, predict

PLOT_MODES: tuple[str, ...] = ("spatial", "channel", "layer", "both")


@dataclass(frozen=True)
class LatencyCurve:
    """Whole-model latency (ms per batch) of one mode at each density."""

    mode: str
    label: str
    densities: tuple[float, ...]
    latencies_ms: tuple[float, ...]


@dataclass(frozen=True)
class LatencyCurves:
    """The curves of several modes and the static model's latency, on one device."""

    model: str
    hardware: str
    batch: int
    static_ms: float
    curves: tuple[LatencyCurve, ...]


def latency_curves(
    model: str, hardware: LatencyLike, modes: tuple[str, ...] = PLOT_MODES, *, points: int = 11,
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, batch: int | None = None,
    input_size: InputSize = 224,
) -> LatencyCurves:
    """Predict ``model`` with every gate at ``points`` densities from 0 to 1, for each of ``modes``."""
    unknown = [m for m in modes if m not in MODES or m == "static"]
    if unknown or not modes:
        raise UsageError(f"modes: expected dynamic modes among {', '.join(PLOT_MODES)}, got {'-'.join(modes) or 'none'}")
    if points < 2:
        raise UsageError(f"points must be at least 2, got {points}")
    latency = latency_model(hardware, batch)
    static = predict(model, latency, mode="static", input_size=input_size)
    densities = tuple(i / (points - 1) for i in range(points))
    curves = []
    for mode in modes:
        reports = [
            predict(model, latency, mode=mode, density=d, spatial_granularity=spatial_granularity,
                    channel_granularity=channel_granularity, input_size=input_size)
            for d in densities
        ]
        label = reports[0].spec.describe().split(" ", 1)[-1] if mode != "layer" else ""
        curves.append(LatencyCurve(mode, f"{mode} {label}".strip(), densities, tuple(r.model_ms for r in reports)))
    return LatencyCurves(static.model, static.hardware, static.batch, static.model_ms, tuple(curves))


def curves_png(curves: LatencyCurves) -> bytes:
    """The curves as a PNG: latency against density, one line per mode, the static model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for curve in curves.curves:
        axes.plot(curve.densities, curve.latencies_ms, marker="o", markersize=3, label=curve.label)
    axes.axhline(curves.static_ms, color="black", linestyle="--", label="static")
    axes.set_xlabel("density")
    axes.set_ylabel(f"latency (ms per batch of {curves.batch})")
    axes.set_title(f"{curves.model} on {curves.hardware}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
