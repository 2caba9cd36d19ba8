"""State dicts of LAUD models: torchvision weights, local files, official LAUDNet checkpoints.

Backbone keys are torchvision's, so a torchvision state_dict loads as is and the maskers
keep their initialisation (every gate on). Every mismatch is reported by name: missing
backbone keys, unexpected keys and shape differences (a different architecture) are
:class:`~laudnet.errors.CheckpointError` s. What a checkpoint says about the model it holds (its
architecture and dynamic spec) is checked in :mod:`.checkpoint`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Union

import torch
from torch import nn
from torchvision.models import WeightsEnum

from ..io import PathLike, load_checkpoint
from ..errors import CheckpointError, CheckpointWarning, UsageError

log = logging.getLogger(__name__)

WeightsArg = Union[None, str, os.PathLike, WeightsEnum]

# Containers a checkpoint file may wrap its state_dict in (laudnet, torchvision references, official LAUDNet).
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


def resolve_weights(weights: WeightsArg, enum: type[WeightsEnum]) -> WeightsEnum | Path | None:
    """Turn a builder's ``weights`` argument into a torchvision enum member or a local path.

    Accepts ``None``, a member of ``enum``, its name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or a
    path to an existing file. A member of another model's enum is an error.
    """
    if weights is None or isinstance(weights, Path):
        return weights
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise UsageError(
                f"weights {weights} belong to another architecture; this model accepts {enum.__name__} "
                f"({', '.join(enum.__members__)})"
            )
        return weights
    if isinstance(weights, (str, os.PathLike)):
        text = str(weights)
        if text in enum.__members__ or text == "DEFAULT":
            return enum.verify(text)
        if Path(text).exists():
            return Path(text)
        raise UsageError(
            f"weights {text!r} is neither an existing file nor a {enum.__name__} value "
            f"({', '.join([*enum.__members__, 'DEFAULT'])})"
        )
    raise UsageError(f"weights: expected None, a {enum.__name__}, its name or a file path, got {type(weights).__name__}")


def extract_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint dict (unwrapped, ``module.`` prefixes of DDP removed)."""
    for key in _STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("checkpoint holds no tensors (expected a state_dict, or one under 'model' / 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """Load ``state`` strictly for the backbone; masker parameters may be absent (they keep their init).

    Raises :class:`CheckpointError` naming the keys when the backbone does not match.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    missing_backbone = [k for k in missing if ".masker_" not in k]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch (a different architecture?) for {_some(mismatched)}")
    if missing_backbone:
        problems.append(f"missing keys {_some(missing_backbone)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if problems:
        name = getattr(model, "name", type(model).__name__)
        raise CheckpointError(f"cannot load {source} into {name}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if ".masker_" in k]
    if fresh:
        log.info("loaded %s; %d masker tensors keep their initialisation (every gate on)", source, len(fresh))


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def has_masker_weights(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state_dict holds any masker tensor (a LAUDNet checkpoint of a dynamic model)."""
    return any(".masker_" in k for k in state)


def convert_official_state_dict(checkpoint: PathLike | dict) -> dict[str, torch.Tensor]:
    """Map the weights of an official LAUDNet checkpoint (a path, the loaded dict or its state_dict)
    to laudnet's key layout.

    The official RegNet keeps its maskers under ``….f.masker_*``, laudnet under ``….masker_*``.
    The official MLP channel masker names its layers ``masker_channel.conv`` (a single ``Linear``)
    or ``masker_channel.conv.{0,2}``; laudnet calls them ``masker_channel.layers.*``. The official
    ``conv_linear`` masker's ``conv`` / ``linear`` keep their names. Backbone and spatial-masker
    keys are shared. A state_dict with no masker at all (torchvision weights, say) is returned with a
    :class:`CheckpointWarning`: its maskers would keep their initialisation.

    :func:`laudnet.models.from_official` also rebuilds the model with the options that reproduce
    the official logits; use it unless building the model yourself.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    state = extract_state_dict(checkpoint)
    if not has_masker_weights(state):
        warnings.warn("the state_dict holds no LAUDNet masker weights (torchvision weights?): a dynamic model's "
                      "maskers keep their initialisation (every gate on)", CheckpointWarning, stacklevel=2)
    return rename_official_keys(state)


def rename_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official LAUDNet key layout renamed to laudnet's (see :func:`convert_official_state_dict`)."""
    state = {k.replace(".f.masker_", ".masker_"): v for k, v in state.items()}
    suffix = ".masker_channel.linear.weight"  # only the conv_linear masker has a `linear`
    conv_linear = {k[: -len(suffix)] for k in state if k.endswith(suffix)}
    converted = {}
    for key, value in state.items():
        if ".masker_channel.conv." in key:
            prefix, rest = key.split(".masker_channel.conv.", 1)
            if prefix not in conv_linear:
                if rest in ("weight", "bias"):
                    rest = f"0.{rest}"
                key = f"{prefix}.masker_channel.layers.{rest}"
        converted[key] = value
    return converted
