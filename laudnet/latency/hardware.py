"""Accelerators as data: the parameters of the latency model, presets and YAML specs.

The model sees a device as ``n_pes`` processing elements (GPU SMs) of ``lanes_per_pe``
FP32 lanes each, clocked at ``frequency_hz``, fed by DRAM at ``dram_bandwidth`` bytes/s
through an L2 cache ``l2_bandwidth_ratio`` times faster. A PE needs
``lanes_per_pe * pipeline_depth`` independent operations in flight to be fully busy;
memory moves in transactions of ``transaction_words`` FP32 words; every kernel costs
``launch_time_s`` to start. ``latency_mode`` says whether compute and memory time add
up (``"add"``) or overlap (``"max"``).

A :class:`Hardware` is a plain frozen dataclass of numbers, so it can be fitted to
measurements, hashed as a cache key and round-tripped through YAML. A profile calibrated on a
device (``laudnet calibrate``) adds ``engine``: the device, thread count and engine backend it was measured with
and the fitted cost of each of the sparse engine's operator kinds (:mod:`.costs`); such a profile
predicts the engine's execution of a model on that device rather than the paper's GPU kernels.
YAML files may also carry ``calibration``, a record of how the profile was made, which prediction
ignores.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from ..io import write_text
from .costs import EngineCosts
from ..errors import MissingFileError, UsageError

LATENCY_MODES: tuple[str, ...] = ("add", "max")
RECORD_KEY = "calibration"

HardwareLike = Union[str, os.PathLike, "Hardware"]


@dataclass(frozen=True)
class Hardware:
    """The parameters of one accelerator, at one batch size."""

    name: str
    n_pes: int
    lanes_per_pe: float
    frequency_hz: float
    dram_bandwidth: float
    l2_bandwidth_ratio: float = 4.0
    transaction_words: int = 8
    pipeline_depth: int = 4
    launch_time_s: float = 8e-6
    batch_size: int = 1
    latency_mode: str = "add"
    engine: EngineCosts | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"hardware name: expected a non-empty string, got {self.name!r}")
        if self.engine is not None and not isinstance(self.engine, EngineCosts):
            raise UsageError(f"hardware {self.name}: engine must be EngineCosts, got {type(self.engine).__name__}")
        for f in dataclasses.fields(self):
            if f.name in ("name", "latency_mode", "engine"):
                continue
            value = getattr(self, f.name)
            integral = f.type in ("int", int)
            valid_type = isinstance(value, int) if integral else isinstance(value, (int, float))
            if isinstance(value, bool) or not valid_type:
                kind = "an integer" if integral else "a number"
                raise UsageError(f"hardware {self.name}: {f.name} must be {kind}, got {value!r}")
            if not value > 0 and not (f.name == "launch_time_s" and value == 0):
                raise UsageError(f"hardware {self.name}: {f.name} must be positive, got {value!r}")
        if self.latency_mode not in LATENCY_MODES:
            raise UsageError(
                f"hardware {self.name}: latency_mode must be one of {', '.join(LATENCY_MODES)}, "
                f"got {self.latency_mode!r}"
            )

    @property
    def dram_words_per_s(self) -> float:
        """DRAM bandwidth in FP32 words per second."""
        return self.dram_bandwidth / 4

    @property
    def l2_words_per_s(self) -> float:
        """L2 bandwidth in FP32 words per second."""
        return self.dram_words_per_s * self.l2_bandwidth_ratio

    @property
    def peak_parallelism(self) -> float:
        """Operations one PE must have in flight to run at full speed."""
        return self.lanes_per_pe * self.pipeline_depth

    def with_batch(self, batch_size: int) -> "Hardware":
        """The same device predicting for another batch size."""
        return dataclasses.replace(self, batch_size=batch_size)

    @property
    def calibrated(self) -> bool:
        """Whether this profile prices the sparse engine's operations on a measured device."""
        return self.engine is not None

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "engine"}
        if self.engine is not None:
            values["engine"] = self.engine.to_dict()
        return values


PRESETS: dict[str, Hardware] = {
    hw.name: hw
    for hw in (
        # The five devices of the paper, with the parameters of its simulator.
        Hardware("v100", 80, 64, 1.5e9, 700e9, batch_size=128),
        Hardware("rtx3090", 82, 128, 1.25e9, 936e9, l2_bandwidth_ratio=1.0, batch_size=128),
        Hardware("rtx3060", 28, 128, 1.777e9, 360e9, batch_size=128),
        Hardware("tx2", 2, 128, 1.3e9, 59.7e9, batch_size=1),
        Hardware("nano", 1, 128, 0.921e9, 25.6e9, batch_size=1),
        # From NVIDIA datasheets (A100 SXM4 40 GB, H100 SXM5): SMs, FP32 lanes per SM,
        # boost clock, HBM bandwidth. The L2 ratio is the simulator's default.
        Hardware("a100", 108, 64, 1.41e9, 1555e9, batch_size=128),
        Hardware("h100", 132, 128, 1.98e9, 3.35e12, batch_size=128),
    )
}


def list_presets() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_hardware(spec: HardwareLike) -> Hardware:
    """Resolve a preset name, a path to a YAML spec, or a :class:`Hardware` itself."""
    if isinstance(spec, Hardware):
        return spec
    if isinstance(spec, str) and spec.lower() in PRESETS:
        return PRESETS[spec.lower()]
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return load_hardware(path)
    raise UsageError(
        f"unknown hardware {str(spec)!r}: use a preset ({', '.join(PRESETS)}) or a path to a YAML spec"
    )


def load_hardware(path: Union[str, os.PathLike]) -> Hardware:
    """Read a hardware spec from YAML; every malformed file raises one clear ``ValueError``."""
    path = Path(path)
    data = _read_spec(path)
    fields = {f.name: f for f in dataclasses.fields(Hardware)}
    values = {"name": str(data.get("name", path.stem))}
    try:
        for key, value in data.items():
            if key == "engine":
                values[key] = _engine(value)
            elif key not in ("name", RECORD_KEY):
                values[key] = _coerce(path, key, value, fields[key].type)
        return Hardware(**values)
    except ValueError as error:
        message = str(error)
        prefix = f"hardware spec {path}: "
        raise UsageError(message if message.startswith(prefix) else prefix + message) from None


def load_record(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``calibration`` record of a profile (empty for a hand-written spec)."""
    return dict(_read_spec(Path(path)).get(RECORD_KEY) or {})


def _read_spec(path: Path) -> dict[str, Any]:
    """The YAML mapping of a spec, its keys checked: known, required ones present, record a mapping."""
    if not path.is_file():
        raise MissingFileError(f"hardware spec not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"hardware spec {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"hardware spec {path}: expected a mapping of parameters, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Hardware)}
    known = list(fields) + [RECORD_KEY]
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise UsageError(f"hardware spec {path}: unknown keys {', '.join(unknown)}; known keys are {', '.join(known)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n != "name"]
    missing = [n for n in required if n not in data]
    if missing:
        raise UsageError(f"hardware spec {path}: missing {', '.join(missing)}")
    if not isinstance(data.get(RECORD_KEY, {}), dict):
        raise UsageError(f"hardware spec {path}: {RECORD_KEY} must be a mapping")
    return data


def save_hardware(
    hardware: Hardware, path: Union[str, os.PathLike], record: dict[str, Any] | None = None
) -> None:
    """Write ``hardware`` (and a ``calibration`` record) as YAML that :func:`load_hardware` reads back
    unchanged; atomically, so a profile is never half-written."""
    values = hardware.to_dict()
    if record:
        values[RECORD_KEY] = record
    write_text(path, yaml.safe_dump(values, sort_keys=False))


def _engine(value: Any) -> EngineCosts:
    """The ``engine`` section: device, threads and per-kind costs."""
    if not isinstance(value, dict):
        raise UsageError(f"engine must be a mapping with device, threads, backend and costs, got {value!r}")
    unknown = sorted(set(map(str, value)) - {"device", "threads", "backend", "costs"})
    if unknown:
        raise UsageError(f"engine: unknown keys {', '.join(unknown)}; known keys are device, threads, backend, costs")
    missing = [k for k in ("device", "threads") if k not in value]
    if missing:
        raise UsageError(f"engine: missing {', '.join(missing)}")
    return EngineCosts.build(value["device"], value["threads"], value.get("costs") or {}, value.get("backend", "torch"))


def _coerce(path: Path, key: str, value: Any, kind: Any) -> Any:
    """Accept numbers written as strings (YAML reads ``1.5e9`` as text)."""
    if kind in ("str", str) or not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"hardware spec {path}: {key} must be a number, got {value!r}") from None
    if kind in ("int", int):
        if number != int(number):
            raise UsageError(f"hardware spec {path}: {key} must be an integer, got {value!r}")
        return int(number)
    return number
