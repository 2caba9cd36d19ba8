"""The registered LAUD models: ResNet-50/101 and RegNetY-400MF/800MF/1.6GF.

Every builder takes the dynamic configuration (``mode``, ``spatial_granularity``,
``channel_granularity``: one value for all stages or one per stage) and ``weights``
(``None``, a torchvision weights enum or its name, or a local file).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torchvision.models import (
    RegNet_Y_1_6GF_Weights,
    RegNet_Y_400MF_Weights,
    RegNet_Y_800MF_Weights,
    ResNet101_Weights,
    ResNet50_Weights,
    WeightsEnum,
)
from torchvision.models.regnet import BlockParams

from ..dynamic.spec import DynamicSpec, PerStage
from ..errors import UsageError
from .backbone import DynamicBackbone
from .blocks import DynamicBottleneck
from .registry import register_model
from .regnet import LaudRegNet
from .resnet import LaudResNet
from .checkpoint import load_weights
from .weights import WeightsArg, resolve_weights


# Builder arguments every LAUD builder takes besides its model's and blocks' constructor options;
# ``strict_spec=False`` lets a checkpoint of another dynamic spec load its backbone only, with a warning.
_BUILDER_ARGUMENTS = ("weights", "progress", "strict_spec", "mode", "spatial_granularity", "channel_granularity")


def _check_arguments(name: str, model_class: type, kwargs: dict) -> None:
    """One clear error for an argument no part of the model takes (instead of a TypeError deep inside)."""
    accepted = list(_BUILDER_ARGUMENTS)
    for cls, internal in ((model_class, {"self", "spec", "name", "block_params", "block_options"}),
                          (DynamicBottleneck, {"self", "name", "stage", "spec"})):
        accepted += [p for p in inspect.signature(cls.__init__).parameters if p not in internal]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(f"{name}: unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    classes = kwargs.get("num_classes", 1)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise UsageError(f"{name}: num_classes must be a positive integer, got {classes!r}")


def _finish(model: DynamicBackbone, weights: WeightsArg, enum: type[WeightsEnum], progress: bool,
            strict_spec: bool) -> DynamicBackbone:
    resolved = resolve_weights(weights, enum)
    if resolved is not None:
        load_weights(model, resolved, progress, strict_spec=strict_spec)
    return model


def _resnet(
    name: str, default_layers: Sequence[int], enum: type[WeightsEnum], weights: WeightsArg, progress: bool,
    mode: PerStage, spatial_granularity: PerStage, channel_granularity: PerStage | None, **kwargs,
) -> LaudResNet:
    _check_arguments(name, LaudResNet, kwargs)
    strict_spec = kwargs.pop("strict_spec", True)
    spec = DynamicSpec.build(mode, spatial_granularity, 1 if channel_granularity is None else channel_granularity)
    layers = kwargs.pop("layers", default_layers)
    return _finish(LaudResNet(layers, spec, name=name, **kwargs), weights, enum, progress, strict_spec)


def _regnet_params(**kwargs) -> BlockParams:
    """torchvision's RegNet design parameters, computed on the CPU even under a meta-device context."""
    with torch.device("cpu"):
        return BlockParams.from_init_params(**kwargs)


def _regnet(
    name: str, params: BlockParams, enum: type[WeightsEnum], weights: WeightsArg, progress: bool,
    mode: PerStage, spatial_granularity: PerStage, channel_granularity: PerStage | None, **kwargs,
) -> LaudRegNet:
    _check_arguments(name, LaudRegNet, kwargs)
    strict_spec = kwargs.pop("strict_spec", True)
    if channel_granularity is None:
        # The finest channel groups that never split a conv group: one conv group each.
        channel_granularity = [group_width for _, _, _, group_width, _ in params._get_expanded_params()]
    spec = DynamicSpec.build(mode, spatial_granularity, channel_granularity)
    return _finish(LaudRegNet(params, spec, name=name, **kwargs), weights, enum, progress, strict_spec)


@register_model
def laud_resnet50(
    *, weights: WeightsArg = None, progress: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudResNet:
    """LAUD-ResNet-50 (torchvision ``resnet50`` layout; ``ResNet50_Weights``)."""
    return _resnet("laud_resnet50", (3, 4, 6, 3), ResNet50_Weights, weights, progress, mode,
                   spatial_granularity, channel_granularity, **kwargs)


@register_model
def laud_resnet101(
    *, weights: WeightsArg = None, progress: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudResNet:
    """LAUD-ResNet-101 (torchvision ``resnet101`` layout; ``ResNet101_Weights``)."""
    return _resnet("laud_resnet101", (3, 4, 23, 3), ResNet101_Weights, weights, progress, mode,
                   spatial_granularity, channel_granularity, **kwargs)


@register_model
def laud_regnet_y_400mf(
    *, weights: WeightsArg = None, progress: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudRegNet:
    """LAUD-RegNetY-400MF (torchvision ``regnet_y_400mf``; ``RegNet_Y_400MF_Weights``)."""
    params = _regnet_params(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25)
    return _regnet("laud_regnet_y_400mf", params, RegNet_Y_400MF_Weights, weights, progress, mode,
                   spatial_granularity, channel_granularity, **kwargs)


@register_model
def laud_regnet_y_800mf(
    *, weights: WeightsArg = None, progress: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudRegNet:
    """LAUD-RegNetY-800MF (torchvision ``regnet_y_800mf``; ``RegNet_Y_800MF_Weights``)."""
    params = _regnet_params(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16, se_ratio=0.25)
    return _regnet("laud_regnet_y_800mf", params, RegNet_Y_800MF_Weights, weights, progress, mode,
                   spatial_granularity, channel_granularity, **kwargs)


@register_model
def laud_regnet_y_1_6gf(
    *, weights: WeightsArg = None, progress: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudRegNet:
    """LAUD-RegNetY-1.6GF (torchvision ``regnet_y_1_6gf``; ``RegNet_Y_1_6GF_Weights``)."""
    params = _regnet_params(depth=27, w_0=48, w_a=20.71, w_m=2.65, group_width=24, se_ratio=0.25)
    return _regnet("laud_regnet_y_1_6gf", params, RegNet_Y_1_6GF_Weights, weights, progress, mode,
                   spatial_granularity, channel_granularity, **kwargs)
