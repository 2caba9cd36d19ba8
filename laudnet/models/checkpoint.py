"""Checkpoints that say what they hold: rebuilding a model from one, and checking one fits a model.

A laudnet checkpoint stores ``model_config`` (``{"name", "kwargs"}``, the registry's
``build_config``: architecture, dynamic spec and options); an official LAUDNet checkpoint its
``hyper_set``. Loading a checkpoint into a model built otherwise compares the two: another
architecture, or another dynamic spec (a layer-skipping checkpoint in a spatial model, S=4 in an
S=1 model, a ``before_bn`` checkpoint in an ``after_act`` model) is a
:class:`~laudnet.errors.CheckpointError` naming both, unless ``strict_spec=False`` asks for the
backbone only (with a :class:`~laudnet.errors.CheckpointWarning` saying what differs). A
checkpoint of a static model loads into any model of its architecture: that is how a dynamic
model starts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torchvision.models import WeightsEnum

from ..dynamic.spec import NUM_STAGES, DynamicSpec, StageSpec
from ..errors import CheckpointError, CheckpointWarning, UsageError
from ..io import PathLike, load_checkpoint
from .backbone import DynamicBackbone
from .official import from_official, is_official_checkpoint, official_config
from .registry import create_model
from .weights import extract_state_dict, has_masker_weights, load_state_dict, rename_official_keys

# Block options that change what a dynamic model computes, with their defaults.
BEHAVIOUR_OPTIONS: dict[str, Any] = {"channel_mask_placement": "after_act", "se_pooling": "computed",
                                     "channel_masker": "mlp"}

# The detectors whose checkpoints ``laudnet detect`` reads (laudnet.detection.models.DETECTORS).
_DETECTORS = ("retinanet", "faster_rcnn", "mask_rcnn")


@dataclass(frozen=True)
class ModelDescription:
    """What a model is, as far as its weights care: its registered name, dynamic spec and behaviour options."""

    name: str
    spec: DynamicSpec
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``laud_resnet50 spatial-spatial-spatial-spatial S=4-4-2-1`` plus options that are not the defaults."""
        extra = [f"{k}={v!r}" for k, v in self.options.items() if v != BEHAVIOUR_OPTIONS[k]]
        return " ".join([self.name, self.spec.describe(), *extra])

    def differences(self, other: "ModelDescription") -> list[str]:
        """What differs between ``self`` (a checkpoint) and ``other`` (a model), stage by stage."""
        found = []
        for i, (a, b) in enumerate(zip(self.spec.stages, other.spec.stages)):
            if _effective(a) != _effective(b):
                found.append(f"stage {i + 1}: {_stage_text(a)} vs {_stage_text(b)}")
        for key in BEHAVIOUR_OPTIONS:
            if self.options.get(key) != other.options.get(key) and _option_matters(key, self.spec):
                found.append(f"{key}: {self.options.get(key)!r} vs {other.options.get(key)!r}")
        return found


def _effective(stage: StageSpec) -> tuple:
    """A stage's settings that change the model: S only for spatial masks, G only for channel masks."""
    return (stage.mode, stage.spatial_granularity if stage.mode in ("spatial", "both") else None,
            stage.channel_granularity if stage.has_channel else None)


def _stage_text(stage: StageSpec) -> str:
    mode, s, g = _effective(stage)
    return " ".join([mode] + ([f"S={s}"] if s is not None else []) + ([f"G={g}"] if g is not None else []))


def _option_matters(key: str, spec: DynamicSpec) -> bool:
    if key == "se_pooling":
        return any(s.has_spatial for s in spec.stages)
    return any(s.has_channel for s in spec.stages)


def describe_model(model: DynamicBackbone) -> ModelDescription:
    """The :class:`ModelDescription` of a built LAUD model."""
    block = next((b for _, b in model.named_dynamic_blocks()), None)
    attributes = {"channel_mask_placement": "channel_mask_placement", "se_pooling": "se_pooling",
                  "channel_masker": "channel_masker_kind"}  # bottleneck options; other families keep the defaults
    options = {k: getattr(block, attributes[k], v) for k, v in BEHAVIOUR_OPTIONS.items()}
    return ModelDescription(model.name, model.dynamic_spec, options)


def describe_config(config: dict) -> ModelDescription:
    """The :class:`ModelDescription` of a ``model_config`` (``{"name", "kwargs"}``)."""
    kwargs = config.get("kwargs") or {}
    mode = kwargs.get("mode", "static")
    stages = len(mode) if isinstance(mode, list) else NUM_STAGES  # recorded specs list every stage (or block)
    spec = DynamicSpec.build(mode, kwargs.get("spatial_granularity", 1), kwargs.get("channel_granularity") or 1,
                             num_stages=stages)
    return ModelDescription(str(config.get("name")), spec, {k: kwargs.get(k, v) for k, v in BEHAVIOUR_OPTIONS.items()})


def describe_checkpoint(checkpoint: dict) -> ModelDescription | None:
    """What a loaded checkpoint says about its model (``None`` for a bare state_dict, e.g. torchvision's)."""
    if is_official_checkpoint(checkpoint):
        config = official_config(checkpoint)
        kwargs = config.model_kwargs()
        return ModelDescription(config.model_name, config.spec,
                                {k: kwargs.get(k, v) for k, v in BEHAVIOUR_OPTIONS.items()})
    config = checkpoint.get("model_config")
    if isinstance(config, dict) and "name" in config:
        return describe_config(config)
    return None


def load_checked(model: DynamicBackbone, checkpoint: dict, source: str, strict_spec: bool = True) -> None:
    """Load a checkpoint into ``model`` after checking that it holds this model (see the module docstring)."""
    own = describe_model(model)
    held = describe_checkpoint(checkpoint)
    official = is_official_checkpoint(checkpoint)
    state = extract_state_dict(checkpoint)
    if official:
        state = rename_official_keys(state)
    if held is not None:
        if held.name in _DETECTORS:
            raise CheckpointError(f"{source} is a laudnet detection checkpoint ({held.name}); it is not the weights "
                                  f"of a {own.name} (`laudnet detect eval --checkpoint {source}` reads it)")
        if held.name != own.name:
            raise CheckpointError(f"{source} holds a {held.describe()} model; this model is a {own.name}")
        differences = held.differences(own) if not held.spec.is_static else []
        if differences:
            how = (f"load it with laudnet.models.from_official({source!r}), which builds that model" if official
                   else f"build the model from the checkpoint (laudnet.models.model_from_checkpoint({source!r}))")
            text = (f"{source} was trained as {held.describe()}; this model is {own.describe()} "
                    f"({'; '.join(differences)})")
            if strict_spec:
                raise CheckpointError(f"{text}: {how}, or pass strict_spec=False to load its backbone only")
            warnings.warn(f"{text}: loading its backbone only; the maskers keep their initialisation",
                          CheckpointWarning, stacklevel=3)
            state = {k: v for k, v in state.items() if ".masker_" not in k}
        elif not held.spec.is_static and not has_masker_weights(state):
            warnings.warn(f"{source} describes a dynamic model ({held.describe()}) but holds no masker weights; "
                          "the maskers keep their initialisation (every gate on)", CheckpointWarning, stacklevel=3)
    load_state_dict(model, state, source)


def load_weights(model: DynamicBackbone, weights: WeightsEnum | Path, progress: bool = True,
                 strict_spec: bool = True) -> None:
    """Load torchvision ``weights`` or a local file (a state_dict, a laudnet or an official checkpoint)
    into ``model``, checking what the file says it holds (:func:`load_checked`)."""
    if isinstance(weights, WeightsEnum):
        load_state_dict(model, weights.get_state_dict(progress=progress, check_hash=True), f"torchvision {weights}")
    else:
        load_checked(model, load_checkpoint(weights), str(weights), strict_spec)


def model_from_checkpoint(checkpoint: Union[PathLike, dict], map_location: Union[str, torch.device] = "cpu",
                          source: str | None = None) -> DynamicBackbone:
    """Build the model a checkpoint (a path, or the loaded dict from ``source``) describes and load its weights.

    A laudnet checkpoint must hold ``model_config`` (``{"name", "kwargs"}``, as recorded in
    ``model.build_config``) and the weights under ``model``; an official LAUDNet checkpoint is
    rebuilt by :func:`~laudnet.models.from_official`. Errors say what the file is instead.
    """
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, map_location)
    source = source or "the checkpoint"
    if is_official_checkpoint(checkpoint):
        return from_official(checkpoint, source=source)
    config = checkpoint.get("model_config")
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(
            f"{source} has no 'model_config', so it is not a laudnet checkpoint (torchvision weights load through "
            "create_model(name, weights=path), official LAUDNet checkpoints through laudnet.models.from_official(path))"
        )
    if config["name"] in _DETECTORS:
        raise CheckpointError(f"{source} is a laudnet detection checkpoint ({config['name']}); evaluate it with "
                              f"`laudnet detect eval --checkpoint {source}`")
    model = create_model(config["name"], **config.get("kwargs", {}))
    load_checked(model, checkpoint, source)
    return model


def checkpoint_metadata(model: nn.Module) -> dict:
    """The ``model_config`` entry to store beside a model's weights."""
    config = getattr(model, "build_config", None)
    if config is None:
        raise UsageError("the model was not built through the laudnet registry, so it cannot be rebuilt from a checkpoint")
    return config


def config_difference(held: dict, own: dict) -> str:
    """How two ``model_config`` s differ, in words (``""`` where they are equal)."""
    if held.get("name") != own.get("name"):
        return f"model {held.get('name')} vs {own.get('name')}"
    a, b = held.get("kwargs") or {}, own.get("kwargs") or {}
    return "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
