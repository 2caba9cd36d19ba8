"""Training configuration: one dataclass per task, read from YAML, overridden from the command line.

Every field is also an option of the task's ``train`` command (``--batch-size 64``,
``--mode 'spatial-spatial-channel-static'``), so there is one list of settings, with its
defaults and its checks, per task. :class:`RunConfig` holds what every task shares
(backbone, optimisation, the dynamic objective, system);
``laudnet.classification.TrainConfig`` is image classification's,
``laudnet.detection.DetectionConfig`` detection's. Reading files (with ``base:`` includes),
checking types and the command-line options work for any of them
(``TrainConfig.load(path, overrides)``, ``.from_dict``, ``.from_checkpoint``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ..dynamic.gates import TEMPERATURE_SCHEDULES
from ..io import PathLike, write_text
from ..errors import MissingFileError, UsageError

PerStage = Union[str, int, list]

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("none", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "step")


C = TypeVar("C", bound="RunConfig")


@dataclass
class RunConfig:
    """What every laudnet training run has: the LAUD backbone, optimisation, the dynamic
    objective and the system. Tasks subclass it with their data and task settings (and
    their defaults); classification's defaults follow the official ImageNet recipe."""

    # model
    model: str = "laud_resnet50"
    mode: PerStage = "spatial"
    spatial_granularity: PerStage = 1
    channel_granularity: PerStage | None = None
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    # data
    data: str = "synthetic"
    synthetic_train_size: int = 4096
    synthetic_val_size: int = 1024
    workers: int = 4
    # optimisation
    epochs: int = 100
    batch_size: int = 1024
    optimizer: str = "sgd"
    lr: float = 0.08
    backbone_lr_mult: float = 1.0
    backbone_weight_decay_mult: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01
    lr_schedule: str = "cosine"
    lr_milestones: list = field(default_factory=list)
    # dynamic training
    target: float = 0.5
    target_begin_epoch: int = 0
    lambda_sparsity: float = 10.0
    t0: float = 5.0
    t_last: float = 0.1
    temperature_schedule: str = "exp"
    bounds_relax_until: float = 0.33
    # system
    device: str = "auto"
    amp: str = "none"
    seed: int = 0
    output: str = "runs/laudnet"
    log_every: int = 20

    def validate(self) -> "RunConfig":
        """Check values a user may get wrong; raise ``ValueError`` saying what is accepted."""
        if not 0.0 < self.target <= 1.0:
            raise UsageError(f"target must be in (0, 1], got {self.target}")
        check_positive_ints(self, "epochs", "batch_size", "synthetic_train_size", "synthetic_val_size", "log_every")
        check_non_negative_ints(self, "workers", "target_begin_epoch")
        for name in ("lr", "t0", "t_last", "bounds_relax_until"):
            if float(getattr(self, name)) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lambda_sparsity", "weight_decay", "warmup_epochs", "backbone_lr_mult",
                     "backbone_weight_decay_mult"):
            if float(getattr(self, name)) < 0:
                raise UsageError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if not 0.0 < self.warmup_start <= 1.0:
            raise UsageError(f"warmup_start must be in (0, 1], got {self.warmup_start}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("temperature_schedule", self.temperature_schedule, TEMPERATURE_SCHEDULES)
        if not isinstance(self.lr_milestones, list) or any(
                isinstance(m, bool) or not isinstance(m, int) or not 0 < m < self.epochs for m in self.lr_milestones):
            raise UsageError(f"lr_milestones must be a list of epochs between 1 and epochs - 1, got {self.lr_milestones!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.model_kwargs, dict):
            raise UsageError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """A validated config; unknown keys are an error listing the known ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise UsageError(f"unknown config keys {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}")
        return cls(**{k: _coerce(fields[k], v) for k, v in values.items()}).validate()

    @classmethod
    def from_checkpoint(cls: type[C], checkpoint: dict[str, Any], **overrides: Any) -> C:
        """The config stored in a laudnet checkpoint, with ``overrides`` (``None`` values ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (checkpoint.get("config") or {}).items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def load(cls: type[C], path: PathLike | None, overrides: dict[str, Any] | None = None) -> C:
        """Read a YAML config (or start from the defaults) and apply ``overrides``.

        A config may name another with ``base: other.yaml`` (relative to itself): its settings
        are read first and this file's override them, so recipes share one base.
        """
        values = _read_yaml(Path(path)) if path is not None else {}
        values.update(overrides or {})
        return cls.from_dict(values)

    def save(self, path: PathLike) -> None:
        """Write the effective configuration as YAML (atomically)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_positive_ints(config: RunConfig, *names: str) -> None:
    for name in names:
        if int(getattr(config, name)) < 1:
            raise UsageError(f"{name} must be a positive integer, got {getattr(config, name)}")


def check_non_negative_ints(config: RunConfig, *names: str) -> None:
    for name in names:
        if int(getattr(config, name)) < 0:
            raise UsageError(f"{name} must be zero or positive, got {getattr(config, name)}")


def check_choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise UsageError(f"{name} must be one of {', '.join(accepted)}, got {value!r}")


# Fields that take one value or one per stage, so no single type fits them.
_PER_STAGE_FIELDS = ("mode", "spatial_granularity", "channel_granularity")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Fit a YAML / command-line value to the type of the field's default."""
    if f.name in _PER_STAGE_FIELDS or f.default is None or f.default is dataclasses.MISSING:
        return value
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{f.name} must be true or false, got {value!r}")
        return value
    if isinstance(f.default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UsageError(f"{f.name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(f.default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{f.name} must be a number, got {value!r}")
        return float(value)
    if isinstance(f.default, str) and not isinstance(value, str):
        raise UsageError(f"{f.name} must be a string, got {value!r}")
    return value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise UsageError(f"config file {path} includes itself through 'base'")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"config file {path} is not valid YAML: {error}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return {**_read_yaml(path.parent / base, seen + (path.resolve(),)), **loaded}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[RunConfig]) -> None:
    """One ``--option`` per config field; values are parsed as YAML (``--model-kwargs '{layers: [1,1,1,1]}'``)."""
    group = parser.add_argument_group("config overrides (each config field; YAML values)")
    for f in dataclasses.fields(cls):
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
