"""Designing by latency: the dynamic configuration predicted to meet a latency target on a device.

``suggest`` (``laudnet suggest``) tries each dynamic mode. For a mode it finds, by bisection, the
largest gate density whose whole-model latency, with the per-stage granularity that is fastest at
that density (:func:`~laudnet.latency.search.search_granularity`), is predicted to meet the target;
it then keeps the mode that computes the most (highest MACs ratio) within the target. The answer
is also a training configuration (:class:`~laudnet.classification.TrainConfig` fields) whose MACs
target is that density's MACs ratio (:func:`laudnet.macs.count_macs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ...dynamic.spec import DynamicSpec
from ...errors import UsageError
from ...io import PathLike, write_text
from ...macs import count_macs
from ...models.registry import create_meta_model
from ...models.structure import parse_input_size
from ..device.measure import EngineConfig, measure_engines, measuring
from ..device.validate import ModelComparison, compare
from ..prediction import LatencyLike, latency_model, predict
from .search import search_granularity

SUGGEST_MODES: tuple[str, ...] = ("spatial", "channel", "layer", "both")
BISECTION_STEPS = 12


@dataclass(frozen=True)
class ModeOption:
    """The best setting of one mode for the target: ``feasible`` if some density meets it."""

    mode: str
    feasible: bool
    density: float
    spec: DynamicSpec
    predicted_ms: float
    macs_ratio: float


@dataclass(frozen=True)
class Suggestion:
    """The chosen mode, granularities and density for ``target_ms``, and every mode tried."""

    model: str
    hardware: str
    target_ms: float
    batch: int
    input_size: int
    static_ms: float
    choice: ModeOption
    options: tuple[ModeOption, ...]

    def train_config(self) -> dict[str, Any]:
        """The suggestion as training-config fields: fine-tuning from torchvision's weights, the
        other fields keep the official recipe's defaults."""
        spec = self.choice.spec.to_dict()
        return {
            "model": self.model,
            "mode": "-".join(spec["mode"]),
            "spatial_granularity": "-".join(map(str, spec["spatial_granularity"])),
            "channel_granularity": "-".join(map(str, spec["channel_granularity"])),
            "target": round(self.choice.macs_ratio, 4),
            "weights": "IMAGENET1K_V1",
            "image_size": self.input_size,
            "output": f"runs/{self.model}_{self.choice.mode}_{self.target_ms:g}ms",
        }


def suggest(
    model: str, hardware: LatencyLike, target_ms: float, *, batch: int = 1, input_size: int = 224,
    modes: tuple[str, ...] = SUGGEST_MODES,
) -> Suggestion:
    """The dynamic configuration of ``model`` that computes the most while its whole-model latency
    on ``hardware`` (ms per batch of ``batch``) is predicted to stay within ``target_ms``."""
    if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not target_ms > 0:
        raise UsageError(f"target latency must be a positive number of ms, got {target_ms!r}")
    size = parse_input_size(input_size)
    if size[0] != size[1]:
        raise UsageError(f"suggest writes a training config, whose image_size is square: give --input N, got {input_size!r}")
    unknown = [m for m in modes if m not in SUGGEST_MODES]
    if unknown or not modes:
        raise UsageError(f"modes: expected some of {', '.join(SUGGEST_MODES)}, got {', '.join(modes) or 'none'}")
    hw = latency_model(hardware)
    static = predict(model, hw, mode="static", batch=batch, input_size=size)
    if static.model_ms <= target_ms:
        raise UsageError(
            f"the static {model} already meets {target_ms:g} ms on {hw.name} ({static.model_ms:.2f} ms predicted): "
            "no dynamic model is needed"
        )
    options = tuple(_best_setting(model, hw, mode, target_ms, batch, size[0]) for mode in modes)
    feasible = [o for o in options if o.feasible]
    if not feasible:
        fastest = min(options, key=lambda o: o.predicted_ms)
        raise UsageError(
            f"no mode of {model} meets {target_ms:g} ms on {hw.name}: the fastest, {fastest.mode} with every gate off, "
            f"is predicted at {fastest.predicted_ms:.2f} ms"
        )
    choice = max(feasible, key=lambda o: o.macs_ratio)
    return Suggestion(model, hw.name, float(target_ms), batch, size[0], static.model_ms, choice, options)


def _best_setting(model: str, hw, mode: str, target_ms: float, batch: int, size: int) -> ModeOption:
    """The highest density of ``mode`` predicted within the target (bisection; latency grows with density)."""

    def at(density: float) -> ModeOption:
        if mode == "layer":
            spec = DynamicSpec.build("layer")
        else:
            spec = search_granularity(model, hw, mode, density, batch=batch, input_size=size).spec
        report = predict(model, hw, **spec.to_dict(), density=density, batch=batch, input_size=size)
        feasible = report.model_ms <= target_ms
        return ModeOption(mode, feasible, density, spec, report.model_ms, _macs_ratio(model, spec, density, size))

    best = at(0.0)
    if not best.feasible:
        return best
    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        option = at(round(middle, 4))
        if option.feasible:
            best, low = option, middle
        else:
            high = middle
    return best


def _macs_ratio(model: str, spec: DynamicSpec, density: float, size: int) -> float:
    """The model's MACs ratio with every gate at ``density`` (what a training target means)."""
    instance = create_meta_model(model, **spec.to_dict())
    return count_macs(instance, size, density=density).macs_ratio


def write_config(suggestion: Suggestion, path: PathLike) -> None:
    """Write the suggestion as a training config (YAML, atomically), explained in a header."""
    choice = suggestion.choice
    header = (
        f"# laudnet suggest: {suggestion.model} within {suggestion.target_ms:g} ms per batch of {suggestion.batch} "
        f"at {suggestion.input_size}x{suggestion.input_size} on {suggestion.hardware}.\n"
        f"# Predicted {choice.predicted_ms:.2f} ms with {choice.spec.describe()} and every gate at density "
        f"{choice.density:.3f} (static: {suggestion.static_ms:.2f} ms); target = that density's MACs ratio.\n"
        "# Train with: laudnet train --config THIS_FILE --data /data/imagenet   (other fields: the recipe defaults)\n"
    )
    write_text(path, header + yaml.safe_dump(suggestion.train_config(), sort_keys=False))


def measure_suggestion(suggestion: Suggestion, hardware: LatencyLike, repeats: int = 30) -> ModelComparison:
    """Time the suggestion with the sparse engine on this device, at the profile's thread count, with the
    profile's prediction for the masks that actually ran."""
    hw = latency_model(hardware).hardware
    if hw.engine is None:
        raise UsageError(f"measuring a suggestion needs a calibrated profile (laudnet latency calibrate); "
                         f"{hw.name} is not one")
    choice = suggestion.choice
    config = EngineConfig(suggestion.model, (suggestion.input_size, suggestion.input_size), choice.spec,
                          choice.density, suggestion.batch)
    with measuring(hw.engine.threads):
        (measurement,) = measure_engines([config], repeats=repeats, device=hw.engine.device,
                                         backend=hw.engine.backend)
    return compare(hw, measurement)[1]
