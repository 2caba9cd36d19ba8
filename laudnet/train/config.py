"""Training configuration: one dataclass, read from YAML, overridden from the command line.

Every field is also a ``laudnet train`` option (``--batch-size 64``, ``--mode 'spatial-spatial-channel-static'``),
so there is one list of settings, with its defaults and its checks, here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..dynamic.gates import TEMPERATURE_SCHEDULES
from ..io import PathLike, write_text

PerStage = Union[str, int, list]

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the official LAUDNet ImageNet recipe."""

    # model
    model: str = "laud_resnet50"
    mode: PerStage = "spatial"
    spatial_granularity: PerStage = 1
    channel_granularity: PerStage | None = None
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    teacher: str = "initial"
    pretrain_epochs: int = 0
    # data
    data: str = "synthetic"
    image_size: int = 224
    synthetic_classes: int = 6
    synthetic_train_size: int = 4096
    synthetic_val_size: int = 1024
    synthetic_object_size: int = 14
    workers: int = 4
    # optimisation
    epochs: int = 100
    batch_size: int = 1024
    optimizer: str = "sgd"
    lr: float = 0.08
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    # dynamic training
    target: float = 0.5
    target_begin_epoch: int = 0
    lambda_sparsity: float = 10.0
    alpha_distill: float = 0.5
    distill_temperature: float = 4.0
    t0: float = 5.0
    t_last: float = 0.1
    temperature_schedule: str = "exp"
    bounds_relax_until: float = 0.33
    # system
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    seed: int = 0
    output: str = "runs/laudnet"
    log_every: int = 20

    def validate(self) -> "TrainConfig":
        """Check values a user may get wrong; raise ``ValueError`` saying what is accepted."""
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {self.target}")
        for name in ("epochs", "batch_size", "image_size", "synthetic_train_size", "synthetic_val_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("pretrain_epochs", "workers", "target_begin_epoch"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")
        for name in ("lr", "t0", "t_last", "distill_temperature", "bounds_relax_until"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lambda_sparsity", "alpha_distill", "weight_decay", "warmup_epochs", "backbone_lr_mult"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("temperature_schedule", self.temperature_schedule, TEMPERATURE_SCHEDULES)
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: PathLike) -> None:
        """Write the effective configuration as YAML (atomically)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}, got {value!r}")


# Fields that take one value or one per stage, so no single type fits them.
_PER_STAGE_FIELDS = ("mode", "spatial_granularity", "channel_granularity")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Fit a YAML / command-line value to the type of the field's default."""
    if f.name in _PER_STAGE_FIELDS or f.default is None or f.default is dataclasses.MISSING:
        return value
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{f.name} must be true or false, got {value!r}")
        return value
    if isinstance(f.default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{f.name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(f.default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        return float(value)
    if isinstance(f.default, str) and not isinstance(value, str):
        raise ValueError(f"{f.name} must be a string, got {value!r}")
    return value


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a validated config; unknown keys are an error listing the known ones."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config keys {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}")
    return TrainConfig(**{k: _coerce(fields[k], v) for k, v in values.items()}).validate()


def config_from_checkpoint(checkpoint: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The training config stored in a laudnet checkpoint, with ``overrides`` (``None`` values ignored)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in (checkpoint.get("config") or {}).items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values)


def load_config(path: PathLike | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply ``overrides``.

    A config may name another with ``base: other.yaml`` (relative to itself): its settings
    are read first and this file's override them, so recipes share one base.
    """
    values = _read_yaml(Path(path)) if path is not None else {}
    values.update(overrides or {})
    return config_from_dict(values)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"config file {path} includes itself through 'base'")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return {**_read_yaml(path.parent / base, seen + (path.resolve(),)), **loaded}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per config field; values are parsed as YAML (``--model-kwargs '{layers: [1,1,1,1]}'``)."""
    group = parser.add_argument_group("config overrides (each config field; YAML values)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f"override_{f.name}", default=None, metavar="VALUE", type=_yaml_value)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "override_"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
