"""LAUD-RegNetY: torchvision's RegNetY (grouped 3×3 conv + squeeze-excitation) with dynamic blocks.

The block's layers are torchvision's own ``BottleneckTransform`` and projection, under the
same names, so torchvision weights load as they are.
"""

from __future__ import annotations

from collections import OrderedDict
import math

import torch
from torch import nn
from torchvision.models.regnet import BlockParams, BottleneckTransform, SimpleStemIN
from torchvision.ops.misc import Conv2dNormActivation

from ..dynamic.spec import DynamicSpec, StageSpec
from .backbone import DynamicBackbone
from .blocks import DynamicBottleneck, Unit


class LaudRegNetBlock(DynamicBottleneck):
    """RegNet's ``ResBottleneckBlock`` as a dynamic block."""

    def __init__(
        self, width_in: int, width_out: int, stride: int, group_width: int, bottleneck_multiplier: float,
        se_ratio: float | None, *, name: str, stage: int, spec: StageSpec, **block_options,
    ) -> None:
        super().__init__(name, stage, spec, **block_options)
        norm, act = nn.BatchNorm2d, nn.ReLU
        self.proj = (
            Conv2dNormActivation(width_in, width_out, kernel_size=1, stride=stride, norm_layer=norm, activation_layer=None)
            if width_in != width_out or stride != 1
            else None
        )
        self.f = BottleneckTransform(width_in, width_out, stride, norm, act, group_width, bottleneck_multiplier, se_ratio)
        self.activation = act(inplace=True)
        self._add_maskers()

    def units(self) -> tuple[Unit, Unit, Unit]:
        f = self.f
        return (Unit(f.a[0], f.a[1], f.a[2]), Unit(f.b[0], f.b[1], f.b[2]), Unit(f.c[0], f.c[1], None))

    @property
    def se(self) -> nn.Module | None:
        return getattr(self.f, "se", None)

    @property
    def projection(self) -> nn.Module | None:
        return self.proj

    @property
    def out_activation(self) -> nn.Module:
        return self.activation


class LaudRegNet(DynamicBackbone):
    """A RegNet whose four stages follow a :class:`DynamicSpec`."""

    def __init__(
        self,
        block_params: BlockParams,
        spec: DynamicSpec,
        num_classes: int = 1000,
        stem_width: int = 32,
        name: str = "laud_regnet",
        **block_options,
    ) -> None:
        super().__init__()
        self.name = name
        self.dynamic_spec = spec
        self.stem = SimpleStemIN(3, stem_width, nn.BatchNorm2d, nn.ReLU)
        stages = []
        width_in = stem_width
        params = list(block_params._get_expanded_params())
        if len(params) != len(spec.stages):
            raise ValueError(f"RegNet has {len(params)} stages but the spec has {len(spec.stages)}")
        for i, (width_out, stride, depth, group_width, multiplier) in enumerate(params):
            blocks = OrderedDict()
            for j in range(depth):
                blocks[f"block{i + 1}-{j}"] = LaudRegNetBlock(
                    width_in if j == 0 else width_out, width_out, stride if j == 0 else 1, group_width,
                    multiplier, block_params.se_ratio, name=f"trunk_output.block{i + 1}.block{i + 1}-{j}",
                    stage=i, spec=spec.stages[i], **block_options,
                )
            stages.append((f"block{i + 1}", nn.Sequential(blocks)))
            width_in = width_out
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's RegNet initialisation; maskers keep their own (gates start on)."""
        for name, module in self.named_modules():
            if ".masker_" in name:
                continue
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[nn.Sequential]:
        return list(self.trunk_output.children())

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x).flatten(start_dim=1))
