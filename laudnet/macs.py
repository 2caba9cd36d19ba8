"""Multiply-accumulate counts of static and dynamic blocks and models.

MACs count convolutions and fully connected layers only — exactly what
``torch.utils.flop_counter`` counts (its FLOPs are 2 × MACs) — so the dense count of a
static model equals the flop counter's, and the sparse engine's executed MACs can be
checked against the dynamic count. Dynamic MACs follow the LAUDNet paper: each conv's
dense MACs scaled by the fraction of positions and of channels it computes, plus the
maskers and the (always computed) projection shortcut
(:meth:`~laudnet.models.structure.BlockShape.dynamic_macs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, Union

import torch

from .models.structure import BlockShape, InputSize, model_shape
from .errors import UsageError

Number = TypeVar("Number", float, torch.Tensor)


@dataclass
class StageMacs:
    """MACs of one stage's residual blocks, per image."""

    stage: int
    mode: str
    blocks: int
    dense_macs: int
    dynamic_macs: float


@dataclass
class MacsReport:
    """Dense and dynamic MACs of a model at one input size, per image."""

    model: str
    spec: str
    input_size: tuple[int, int]
    density: float
    dense_macs: int
    dynamic_macs: float
    stages: list[StageMacs]

    @property
    def macs_ratio(self) -> float:
        return self.dynamic_macs / self.dense_macs


def count_macs(model: torch.nn.Module, input_size: InputSize = 224, density: Union[float, None] = None) -> MacsReport:
    """Count ``model``'s MACs with every gate at ``density`` (default 1: all on, maskers paid).

    All three convs of a dynamic block and its channel groups run at ``density``; static
    stages are unaffected.
    """
    d = 1.0 if density is None else float(density)
    if not 0.0 <= d <= 1.0:
        raise UsageError(f"density must be in [0, 1], got {density}")
    shape = model_shape(model, input_size)
    stages = [StageMacs(s, "static", 0, 0, 0.0) for s in range(4)]
    for block_shape in shape.blocks:
        spec = block_shape.spec
        spatial_d = d if spec.has_spatial else 1.0
        channel_d = d if spec.has_channel else 1.0
        se_active = spatial_d if spec.mode == "layer" else float(spatial_d > 0)
        dynamic = block_shape.dynamic_macs(spatial_d, spatial_d, spatial_d, channel_d, se_active)
        stage = stages[block_shape.stage]
        stage.mode = spec.mode
        stage.blocks += 1
        stage.dense_macs += block_shape.dense_macs
        stage.dynamic_macs += dynamic
    outside = shape.dense_macs - sum(s.dense_macs for s in stages)
    spec = getattr(model, "dynamic_spec", None)
    return MacsReport(
        model=getattr(model, "name", type(model).__name__),
        spec=spec.describe() if spec is not None else "static",
        input_size=shape.input_hw,
        density=d,
        dense_macs=shape.dense_macs,
        dynamic_macs=outside + sum(s.dynamic_macs for s in stages),
        stages=stages,
    )
