"""What every LAUD backbone has in common: stages of dynamic blocks, stats, temperature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..dynamic.maskers import _Masker
from ..dynamic.spec import DynamicSpec
from ..dynamic.stats import BlockStats, ModelStats
from .blocks import DynamicBottleneck
from .family import family_of
from .structure import model_shape
from ..errors import UsageError


@dataclass
class DynamicOutput:
    """``model(x, return_stats=True)``: the logits and what the model computed."""

    logits: torch.Tensor
    stats: ModelStats


@dataclass
class FeatureOutput:
    """:meth:`DynamicBackbone.forward_features`: the four stage outputs and the block statistics."""

    features: list[torch.Tensor]
    blocks: list[BlockStats]


class DynamicBackbone(nn.Module):
    """Base class of LAUD models. Subclasses define the stem, the four stages and the head.

    ``model(x)`` returns logits like the torchvision model; ``model(x, return_stats=True)``
    returns a :class:`DynamicOutput`.
    """

    name: str
    dynamic_spec: DynamicSpec

    def __init__(self) -> None:
        super().__init__()
        self._outside_macs: dict[tuple[int, int], tuple[int, int]] = {}

    # -- what subclasses provide ------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- blocks, maskers and parameters -----------------------------------------------------
    def stages(self) -> list[nn.Sequential]:
        """The residual stages, as the model's family lays them out."""
        return family_of(self).stages(self)

    def named_dynamic_blocks(self) -> Iterator[tuple[str, DynamicBottleneck]]:
        """Every residual block, with its torchvision-style name (``layer1.0``, ...)."""
        for stage in self.stages():
            for block in stage:
                yield block.block_name, block

    def maskers(self) -> Iterator[_Masker]:
        return (m for m in self.modules() if isinstance(m, _Masker))

    def set_temperature(self, temperature: float) -> None:
        """Set the Gumbel-softmax temperature of every masker (the trainer's schedule calls this)."""
        if temperature <= 0:
            raise UsageError(f"temperature must be positive, got {temperature}")
        for masker in self.maskers():
            masker.temperature = float(temperature)

    def set_forced_gates(self, value: bool | None) -> None:
        """Force every gate on (``True``) or off (``False``), or let the maskers decide (``None``)."""
        for masker in self.maskers():
            masker.force = value

    def masker_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if ".masker_" in n)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if ".masker_" not in n)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        """Stem and the four stages; used by detection backbones."""
        x = self.forward_stem(x)
        features = []
        for stage in self.stages():
            x = stage(x)
            features.append(x)
        return FeatureOutput(features, [block.last_stats for _, block in self.named_dynamic_blocks()])

    def forward(self, x: torch.Tensor, return_stats: bool = False) -> torch.Tensor | DynamicOutput:
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        out = self.forward_features(x)
        logits = self.forward_head(out.features[-1])
        if not return_stats:
            return logits
        return DynamicOutput(logits, self.model_stats(out.blocks, hw, include_head=True))

    def model_stats(self, blocks: list[BlockStats], input_hw: tuple[int, int], include_head: bool) -> ModelStats:
        """Combine block statistics with the static stem (and head) MACs at ``input_hw``."""
        if input_hw not in self._outside_macs:
            shape = model_shape(self, input_hw)
            self._outside_macs[input_hw] = (sum(c.macs for c in shape.stem), shape.head.macs)
        stem, head = self._outside_macs[input_hw]
        static = stem + (head if include_head else 0)
        dense = static + sum(b.dense_macs for b in blocks)
        dynamic = static + torch.stack([b.dynamic_macs for b in blocks]).sum(dim=0)
        return ModelStats(blocks=blocks, dense_macs=dense, dynamic_macs=dynamic)
