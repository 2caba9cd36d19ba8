"""LAUD-ResNet: torchvision's ResNet-50/101 (v1.5, stride on the 3×3 conv) with dynamic blocks.

Module names follow ``torchvision.models.resnet`` exactly, so torchvision weights load
as they are; maskers add ``masker_spatial`` / ``masker_channel`` parameters per block.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torchvision
from torch import nn

from ..dynamic.spec import DynamicSpec, StageSpec
from ..errors import UsageError
from .backbone import DynamicBackbone
from .blocks import DynamicBottleneck
from .family import BlockLayout, Family, StemLayout, Unit, register_family
from .structure import ModelShape, bottleneck_model_shape


class ResNetFamily(Family):
    """torchvision's ResNet layout (``conv1``/``bn1``/``maxpool``, ``layer1``-``layer4`` of
    bottlenecks with ``conv1``-``conv3``, ``bn1``-``bn3`` and ``downsample``, ``fc``); LAUD-ResNet
    keeps every name."""

    name = "resnet"

    def stem(self, model: nn.Module) -> StemLayout:
        return StemLayout("conv1", model.conv1, model.bn1, model.relu, model.maxpool)

    def stages(self, model: nn.Module) -> list[nn.Sequential]:
        return [model.layer1, model.layer2, model.layer3, model.layer4]

    def block_names(self, model: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
        for stage, layer in enumerate(self.stages(model)):
            for i, block in enumerate(layer):
                yield f"layer{stage + 1}.{i}", stage, block

    def block(self, block: nn.Module) -> BlockLayout:
        projection = (block.downsample[0], block.downsample[1]) if block.downsample is not None else None
        return BlockLayout(
            Unit(block.conv1, block.bn1, block.relu), Unit(block.conv2, block.bn2, block.relu),
            Unit(block.conv3, block.bn3, None), None, projection, block.relu,
        )

    def shape(self, model: nn.Module, input_hw: tuple[int, int]) -> ModelShape:
        return bottleneck_model_shape(model, input_hw)


RESNET = ResNetFamily()


class LaudBottleneck(DynamicBottleneck):
    """ResNet bottleneck (expansion 4) as a dynamic block."""

    expansion = 4
    family = RESNET

    def __init__(
        self, in_channels: int, planes: int, stride: int, project: bool, *, name: str, stage: int,
        spec: StageSpec, **block_options,
    ) -> None:
        super().__init__(name, stage, spec, **block_options)
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if project
            else None
        )
        self.stride = stride
        self._add_maskers()


class LaudResNet(DynamicBackbone):
    """A ResNet with bottleneck blocks whose stages follow a :class:`DynamicSpec`.

    ``width_multiplier`` scales every channel count (stem included) and ``layers`` sets the
    blocks per stage, for small variants (e.g. the quickstart); torchvision weights need the
    defaults.
    """

    def __init__(
        self,
        layers: Sequence[int],
        spec: DynamicSpec,
        num_classes: int = 1000,
        width_multiplier: float = 1.0,
        name: str = "laud_resnet",
        **block_options,
    ) -> None:
        super().__init__()
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 4 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
            raise UsageError(f"layers: expected 4 positive block counts, got {layers!r}")
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)) or width_multiplier <= 0:
            raise UsageError(f"width_multiplier must be a positive number, got {width_multiplier!r}")
        self.name = name
        self.dynamic_spec = spec
        base = max(8, int(round(64 * width_multiplier)))
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = base
        for i, depth in enumerate(layers):
            planes = base * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(int(depth)):
                blocks.append(
                    LaudBottleneck(
                        in_channels, planes, stride if j == 0 else 1,
                        project=j == 0 and (stride != 1 or in_channels != planes * 4),
                        name=f"layer{i + 1}.{j}", stage=i, spec=spec.stages[i], **block_options,
                    )
                )
                in_channels = planes * LaudBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's ResNet initialisation; maskers keep their own (gates start on)."""
        for name, module in self.named_modules():
            if ".masker_" in name:
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


register_family(RESNET, LaudResNet, torchvision.models.ResNet)
