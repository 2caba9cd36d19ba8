"""Official LAUDNet checkpoints (LeapLabTHU/LAUDNet ``train/main.py``), rebuilt from themselves.

An official checkpoint holds ``state_dict`` and ``hyper_set``: ``str(args)`` of the official
argument parser, which names the architecture (``arch='uni_resnet50'``) and the dynamic
configuration (``dyn_mode='spatial-spatial-spatial-spatial'``, ``mask_spatial_granularity``,
``channel_dyn_granularity``, ``channel_masker``, ``channel_masker_layers``,
``channel_masker_reduction``). :func:`from_official` reads them and builds the laudnet model
whose logits are the official model's, choosing the options where the official code differs:

* ResNet masks channels after the conv, before BN (``channel_mask_placement="before_bn"``);
  RegNetY after BN and ReLU (``"after_act"``, laudnet's default);
* the official RegNetY's squeeze-excitation averages over every position, also in spatial mode
  (``se_pooling="all"``);
* RegNetY channel masks may split conv groups (the official recipe's G=1:
  ``split_conv_groups=True``);
* the ``conv_linear`` channel masker (``channel_masker="conv_linear"``).
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from typing import Any, Union

import torch

from ..dynamic.spec import DynamicSpec
from ..errors import CheckpointError, CheckpointWarning
from ..io import PathLike, load_checkpoint
from .backbone import DynamicBackbone
from .registry import create_model
from .weights import extract_state_dict, load_state_dict, rename_official_keys

# Official ``--arch`` values and the laudnet models they are.
OFFICIAL_ARCHS: dict[str, str] = {
    "uni_resnet50": "laud_resnet50",
    "uni_resnet101": "laud_resnet101",
    "lad_regnet_y_400mf": "laud_regnet_y_400mf",
    "lad_regnet_y_800mf": "laud_regnet_y_800mf",
    "lad_regnet_y_1_6gf": "laud_regnet_y_1_6gf",
}

# hyper_set fields read, and the official parser's defaults of those it may lack.
_REQUIRED = ("dyn_mode", "mask_spatial_granularity", "channel_dyn_granularity", "channel_masker",
             "channel_masker_layers", "channel_masker_reduction")
_OPTIONAL = {"mask_channel_group": "1-1-1-1", "IMAGE_SIZE": 224}
_MASKERS = {"mlp": "mlp", "conv_linear": "conv_linear"}


def is_official_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint is in the official LAUDNet format (``hyper_set`` and ``state_dict``)."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("hyper_set"), str) \
        and isinstance(checkpoint.get("state_dict"), dict)


@dataclass(frozen=True)
class OfficialConfig:
    """What an official checkpoint's ``hyper_set`` says about its model (per-stage tuples)."""

    arch: str
    modes: tuple[str, ...]
    spatial_granularity: tuple[int, ...]
    channel_granularity: tuple[int, ...]
    channel_masker: tuple[str, ...]
    masker_layers: tuple[int, ...]
    masker_reduction: tuple[int, ...]
    spatial_mask_groups: tuple[int, ...]
    image_size: int

    @property
    def model_name(self) -> str:
        return OFFICIAL_ARCHS[self.arch]

    @property
    def family(self) -> str:
        return "resnet" if self.arch.startswith("uni_resnet") else "regnet"

    @property
    def spec(self) -> DynamicSpec:
        return DynamicSpec.build(list(self.modes), list(self.spatial_granularity), list(self.channel_granularity))

    def model_kwargs(self) -> dict[str, Any]:
        """The laudnet builder arguments that reproduce the official model (without ``num_classes``)."""
        spec = self.spec
        channel_stages = [i for i, s in enumerate(spec.stages) if s.has_channel]
        kwargs: dict[str, Any] = {
            "mode": list(self.modes), "spatial_granularity": list(self.spatial_granularity),
            "channel_granularity": list(self.channel_granularity),
            "channel_mask_placement": "before_bn" if self.family == "resnet" else "after_act",
        }
        if self.family == "regnet":
            kwargs.update(se_pooling="all", split_conv_groups=True)
        if channel_stages:
            masker = self._one_setting("channel_masker", self.channel_masker, channel_stages)
            kwargs["channel_masker"] = masker
            kwargs["masker_reduction"] = self._one_setting("channel_masker_reduction", self.masker_reduction,
                                                           channel_stages)
            if masker == "mlp":
                kwargs["masker_layers"] = self._one_setting("channel_masker_layers", self.masker_layers, channel_stages)
        return kwargs

    @staticmethod
    def _one_setting(name: str, values: tuple, stages: list[int]):
        used = {values[i] for i in stages}
        if len(used) > 1:
            raise CheckpointError(f"official hyper_set: {name} differs between the channel stages "
                                  f"({'-'.join(map(str, values))}); laudnet uses one setting for every stage")
        return used.pop()


def parse_hyper_set(hyper_set: str, arch: str | None = None) -> OfficialConfig:
    """Read an official ``hyper_set`` (``str(argparse.Namespace)``); ``arch`` where it lacks one
    (the checkpoint's ``model`` entry)."""
    values = {name: _field(hyper_set, name) for name in ("arch", *_REQUIRED, *_OPTIONAL)}
    arch = values["arch"] if values["arch"] is not None else arch
    missing = [name for name in ("arch", *_REQUIRED) if (arch if name == "arch" else values[name]) is None]
    if missing:
        raise CheckpointError(f"official hyper_set does not name {', '.join(missing)} (is it an official LAUDNet "
                              "checkpoint?)")
    if arch not in OFFICIAL_ARCHS:
        raise CheckpointError(f"official arch {arch!r} has no laudnet model; supported: {', '.join(OFFICIAL_ARCHS)}")
    for name, default in _OPTIONAL.items():
        if values[name] is None:
            values[name] = default
    modes = _per_stage(values, "dyn_mode", str)
    masks = tuple(_MASKERS.get(m.lower(), m) for m in _per_stage(values, "channel_masker", str))
    unknown = sorted(set(masks) - set(_MASKERS))
    if unknown:
        raise CheckpointError(f"official hyper_set: unknown channel_masker {', '.join(unknown)}; "
                              "known: MLP, conv_linear")
    config = OfficialConfig(
        arch=arch, modes=modes, spatial_granularity=_per_stage(values, "mask_spatial_granularity", int),
        channel_granularity=_per_stage(values, "channel_dyn_granularity", int), channel_masker=masks,
        masker_layers=_per_stage(values, "channel_masker_layers", int),
        masker_reduction=_per_stage(values, "channel_masker_reduction", int),
        spatial_mask_groups=_per_stage(values, "mask_channel_group", int), image_size=int(values["IMAGE_SIZE"]),
    )
    grouped = [i + 1 for i, (m, g) in enumerate(zip(modes, config.spatial_mask_groups))
               if m in ("spatial", "layer", "both") and g != 1]
    if grouped:
        raise CheckpointError(f"official mask_channel_group {values['mask_channel_group']}: spatial masks per channel "
                              f"group (stages {', '.join(map(str, grouped))}) are not supported by laudnet")
    return config


def _field(hyper_set: str, name: str) -> Any:
    """The value of ``name=...`` in a Namespace repr (``None`` if absent)."""
    found = re.search(rf"(?:^|[\s(,]){re.escape(name)}=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,)]+)", hyper_set)
    if found is None:
        return None
    try:
        return ast.literal_eval(found.group(1).strip())
    except (ValueError, SyntaxError):
        return found.group(1).strip()


def _per_stage(values: dict, name: str, convert) -> tuple:
    items = str(values[name]).split("-")
    try:
        parsed = tuple(convert(item) for item in items)
    except ValueError:
        parsed = ()
    if len(parsed) != 4:
        raise CheckpointError(f"official hyper_set: {name}={values[name]!r} is not four dash-separated values")
    return parsed


def official_config(checkpoint: dict) -> OfficialConfig:
    """The :class:`OfficialConfig` of a loaded official checkpoint."""
    arch = checkpoint.get("model") if isinstance(checkpoint.get("model"), str) else None
    return parse_hyper_set(checkpoint["hyper_set"], arch)


def from_official(checkpoint: Union[PathLike, dict], map_location: Union[str, torch.device] = "cpu",
                  source: str | None = None, **overrides: Any) -> DynamicBackbone:
    """Rebuild the model of an official LAUDNet checkpoint (a path or the loaded dict) with its weights.

    The architecture, dynamic spec and every compatibility option come from the checkpoint's
    ``hyper_set`` (see the module docstring), ``num_classes`` from its classifier; ``overrides``
    replace any builder argument (``channel_mask_placement="after_act"``, ...). Logits equal the
    official model's in eval mode. The model remembers the options in ``build_config``, so a
    laudnet checkpoint written from it rebuilds it too. Masker weights missing from a dynamic
    checkpoint are a :class:`CheckpointWarning` (those maskers keep their initialisation).
    """
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, map_location)
    source = source or "the official checkpoint"
    if not is_official_checkpoint(checkpoint):
        raise CheckpointError(f"{source} is not an official LAUDNet checkpoint (it has no 'hyper_set' and "
                              "'state_dict'); laudnet checkpoints load with laudnet.models.model_from_checkpoint")
    config = official_config(checkpoint)
    state = rename_official_keys(extract_state_dict(checkpoint))
    fc = state.get("fc.weight")
    kwargs = {**config.model_kwargs(), **({"num_classes": int(fc.shape[0])} if fc is not None else {}), **overrides}
    model = create_model(config.model_name, **kwargs)
    load_state_dict(model, state, source)
    missing = [k for k in model.state_dict() if ".masker_" in k and k not in state]
    if missing:
        warnings.warn(f"{source}: its hyper_set is {config.spec.describe()} but {len(missing)} masker tensors are "
                      f"missing (e.g. {missing[0]}); those maskers keep their initialisation (every gate on)",
                      CheckpointWarning, stacklevel=2)
    return model
