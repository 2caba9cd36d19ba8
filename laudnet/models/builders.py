"""The registered LAUD models: ResNet-50/101 and RegNetY-400MF/800MF/1.6GF.

Every builder takes the dynamic configuration (``mode``, ``spatial_granularity``,
``channel_granularity``: one value for all stages or one per stage) and ``weights``
(``None``, a torchvision weights enum or its name, or a local file).
"""

from __future__ import annotations

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
from .backbone import DynamicBackbone
from .registry import register_model
from .regnet import LaudRegNet
from .resnet import LaudResNet
from .weights import WeightsArg, load_weights, resolve_weights


def _finish(model: DynamicBackbone, weights: WeightsArg, enum: type[WeightsEnum], progress: bool) -> DynamicBackbone:
    resolved = resolve_weights(weights, enum)
    if resolved is not None:
        load_weights(model, resolved, progress)
    return model


def _resnet(
    name: str, default_layers: Sequence[int], enum: type[WeightsEnum], weights: WeightsArg, progress: bool,
    mode: PerStage, spatial_granularity: PerStage, channel_granularity: PerStage | None, **kwargs,
) -> LaudResNet:
    spec = DynamicSpec.build(mode, spatial_granularity, 1 if channel_granularity is None else channel_granularity)
    layers = kwargs.pop("layers", default_layers)
    return _finish(LaudResNet(layers, spec, name=name, **kwargs), weights, enum, progress)


def _regnet_params(**kwargs) -> BlockParams:
    """torchvision's RegNet design parameters, computed on the CPU even under a meta-device context."""
    with torch.device("cpu"):
        return BlockParams.from_init_params(**kwargs)


def _regnet(
    name: str, params: BlockParams, enum: type[WeightsEnum], weights: WeightsArg, progress: bool,
    mode: PerStage, spatial_granularity: PerStage, channel_granularity: PerStage | None, **kwargs,
) -> LaudRegNet:
    if channel_granularity is None:
        # The finest channel groups that never split a conv group: one conv group each.
        channel_granularity = [group_width for _, _, _, group_width, _ in params._get_expanded_params()]
    spec = DynamicSpec.build(mode, spatial_granularity, channel_granularity)
    return _finish(LaudRegNet(params, spec, name=name, **kwargs), weights, enum, progress)


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
