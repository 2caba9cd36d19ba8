"""LAUD-RegNetY: torchvision's RegNetY (grouped 3×3 conv + squeeze-excitation) with dynamic blocks.

The block's layers are torchvision's own ``BottleneckTransform`` and projection, under the
same names, so torchvision weights load as they are.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams, BottleneckTransform, SimpleStemIN
from torchvision.ops.misc import Conv2dNormActivation

from ..dynamic.spec import DynamicSpec, StageSpec
from ..errors import UsageError
from .backbone import DynamicBackbone
from .blocks import DynamicBottleneck
from .family import BlockLayout, Family, StemLayout, Unit, register_family
from .structure import ModelShape, bottleneck_model_shape


class RegNetFamily(Family):
    """torchvision's RegNet layout (``stem``, ``trunk_output`` stages of ``ResBottleneckBlock``
    with ``f.a``/``f.b``/``f.se``/``f.c`` and ``proj``, ``fc``); LAUD-RegNetY keeps every name."""

    name = "regnet"

    def stem(self, model: nn.Module) -> StemLayout:
        return StemLayout("stem", model.stem[0], model.stem[1], model.stem[2], None)

    def stages(self, model: nn.Module) -> list[nn.Sequential]:
        return list(model.trunk_output.children())

    def block_names(self, model: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
        for stage, (stage_name, stage_module) in enumerate(model.trunk_output.named_children()):
            for block_name, block in stage_module.named_children():
                yield f"trunk_output.{stage_name}.{block_name}", stage, block

    def block(self, block: nn.Module) -> BlockLayout:
        f = block.f
        projection = (block.proj[0], block.proj[1]) if block.proj is not None else None
        return BlockLayout(
            Unit(f.a[0], f.a[1], f.a[2]), Unit(f.b[0], f.b[1], f.b[2]), Unit(f.c[0], f.c[1], None),
            getattr(f, "se", None), projection, block.activation,
        )

    def shape(self, model: nn.Module, input_hw: tuple[int, int]) -> ModelShape:
        return bottleneck_model_shape(model, input_hw)


REGNET = RegNetFamily()


class LaudRegNetBlock(DynamicBottleneck):
    """RegNet's ``ResBottleneckBlock`` as a dynamic block."""

    family = REGNET

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
            raise UsageError(f"RegNet has {len(params)} stages but the spec has {len(spec.stages)}")
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

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x).flatten(start_dim=1))


register_family(REGNET, LaudRegNet, torchvision.models.RegNet)
