"""Rebuild a model from a laudnet checkpoint: its ``model_config`` and its weights."""

from __future__ import annotations

from typing import Union

import torch

from ..io import PathLike, load_checkpoint
from .backbone import DynamicBackbone
from .registry import create_model
from .weights import extract_state_dict, load_state_dict
from ..errors import UsageError


def model_from_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> DynamicBackbone:
    """Build the model a laudnet checkpoint describes and load its weights.

    The checkpoint must hold ``model_config`` (``{"name", "kwargs"}``, as recorded in
    ``model.build_config``) and the weights under ``model``. Errors name what is missing.
    """
    checkpoint = load_checkpoint(path, map_location)
    config = checkpoint.get("model_config")
    if not isinstance(config, dict) or "name" not in config:
        raise UsageError(
            f"{path} has no 'model_config' (is it a laudnet checkpoint? torchvision and official LAUDNet "
            "weights load through create_model(..., weights=path))"
        )
    model = create_model(config["name"], **config.get("kwargs", {}))
    load_state_dict(model, extract_state_dict(checkpoint), str(path))
    return model


def checkpoint_metadata(model: DynamicBackbone) -> dict:
    """The ``model_config`` entry to store beside a model's weights."""
    config = getattr(model, "build_config", None)
    if config is None:
        raise UsageError("the model was not built through the laudnet registry, so it cannot be rebuilt from a checkpoint")
    return config
