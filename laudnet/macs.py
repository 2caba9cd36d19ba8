"""Multiply-accumulate counts of static and dynamic blocks and models, in two conventions.

``laudnet`` (the default) counts convolutions and fully connected layers only — exactly what
``torch.utils.flop_counter`` counts (its FLOPs are 2 × MACs) — so the dense count of a static
model equals the flop counter's, and the sparse engine's executed MACs can be checked against
the dynamic count. Dynamic MACs follow the LAUDNet paper: each conv's dense MACs scaled by the
fraction of positions and of channels it computes, plus the maskers and the (always computed)
projection shortcut (:meth:`~laudnet.models.structure.BlockShape.dynamic_macs`); a grouped conv2
whose channel groups are whole conv groups scales once with the kept fraction.

``official`` reproduces the numbers of the official LAUDNet code, which the paper's tables
report: the dense count is its op counter's on the static network (``op_counter.py``: also max
and average pooling, the squeeze-excitation's pooling and sigmoid, the classifier's bias); the
dynamic count is its models' own (their ``forward`` returns it): the stem's max pool, the
maskers' pooling and a bias term of the spatial masker (``in_channels`` per cell), every conv2
scaled by the kept-channel fraction *squared* (RegNet's grouped one too), the squeeze-excitation
always counted in full, and the ``conv_linear`` masker's 1×1 conv counted once per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from .dynamic.maskers import ConvLinearChannelMasker
from .errors import UsageError
from .models.blocks import DynamicBottleneck
from .models.family import family_of
from .models.vit_structure import TransformerBlockShape
from .models.structure import BlockShape, InputSize, ModelShape, model_shape

CONVENTIONS: tuple[str, ...] = ("laudnet", "official")


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
    """Dense and dynamic MACs of a model at one input size, per image, in one ``convention``."""

    model: str
    spec: str
    input_size: tuple[int, int]
    density: float
    dense_macs: int
    dynamic_macs: float
    stages: list[StageMacs]
    convention: str = "laudnet"

    @property
    def macs_ratio(self) -> float:
        return self.dynamic_macs / self.dense_macs


def count_macs(model: torch.nn.Module, input_size: InputSize = 224, density: Union[float, None] = None,
               convention: str = "laudnet") -> MacsReport:
    """Count ``model``'s MACs with every gate at ``density`` in [0, 1] (default 1: all on, maskers paid).

    All three convs of a dynamic block and its channel groups run at ``density``; static
    stages are unaffected. ``convention``: ``laudnet`` or ``official`` (see the module docstring).
    """
    d = 1.0 if density is None else float(density)
    if not 0.0 <= d <= 1.0:
        raise UsageError(f"density must be in [0, 1], got {density}")
    if convention not in CONVENTIONS:
        raise UsageError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    shape = model_shape(model, input_size)
    if convention == "official" and shape.family == "vit":
        raise UsageError("the official convention counts the official CNN code's blocks; ViTs count in laudnet's")
    modules = [block for _, _, block in family_of(model).block_names(model)]
    stages = [StageMacs(s, "static", 0, 0, 0.0) for s in range(4)]
    for block_shape, module in zip(shape.blocks, modules):
        spec = block_shape.spec
        spatial_d = d if spec.has_spatial else 1.0
        channel_d = d if spec.has_channel else 1.0
        if convention == "official":
            dense = _official_dense_block(block_shape)
            dynamic = _official_dynamic_block(block_shape, module, spatial_d, channel_d)
        else:
            dense = block_shape.dense_macs
            if isinstance(block_shape, TransformerBlockShape):  # tokens, heads and sub-blocks at d
                dynamic = block_shape.dynamic_macs(block_shape.uniform(d))
            else:
                se_active = spatial_d if spec.mode == "layer" else float(spatial_d > 0)
                laud = isinstance(module, DynamicBottleneck)
                conv2_d = module.conv2_density(spatial_d, channel_d) if laud else spatial_d
                dynamic = block_shape.dynamic_macs(spatial_d, conv2_d, spatial_d, channel_d, se_active)
                if laud:
                    dynamic += module.masker_macs_beyond_shape(block_shape.in_hw)
        stage = stages[block_shape.stage]
        stage.mode = spec.mode
        stage.blocks += 1
        stage.dense_macs += dense
        stage.dynamic_macs += dynamic
    if convention == "official":
        dense_outside, dynamic_outside = _official_outside(shape)
    else:
        dense_outside = dynamic_outside = shape.dense_macs - sum(b.dense_macs for b in shape.blocks)
    spec = getattr(model, "dynamic_spec", None)
    return MacsReport(
        model=getattr(model, "name", type(model).__name__),
        spec=spec.describe() if spec is not None else "static",
        input_size=shape.input_hw,
        density=d,
        dense_macs=dense_outside + sum(s.dense_macs for s in stages),
        dynamic_macs=dynamic_outside + sum(s.dynamic_macs for s in stages),
        stages=stages,
        convention=convention,
    )


# -- the official convention ----------------------------------------------------------------

def _official_dense_block(b: BlockShape) -> int:
    """The official op counter on a static block: convs, and the squeeze-excitation's pooling and sigmoid."""
    se_extra = b.width * b.out_hw[0] * b.out_hw[1] + b.width if b.se_channels else 0
    return b.dense_macs + se_extra


def _official_dynamic_block(b: BlockShape, block: torch.nn.Module, spatial: float, channel: float) -> float:
    """A block's MACs as the official models' forward counts them, every gate at the given densities."""
    total = (b.conv1.macs * channel * spatial + b.conv2.macs * channel * channel * spatial
             + b.conv3.macs * channel * spatial + b.se_macs)
    if b.projection is not None:
        total += b.projection.macs
    in_pixels = b.in_hw[0] * b.in_hw[1]
    if b.spec.has_spatial:
        cells = b.spatial_grid[0] * b.spatial_grid[1]
        total += b.in_channels * cells + (2 * b.in_channels + b.in_channels) * cells  # pooling, conv and "bias"
    if b.spec.has_channel:
        masker = getattr(block, "masker_channel", None)
        if isinstance(masker, ConvLinearChannelMasker):
            hidden, groups = masker.linear.in_features, masker.num_groups
            total += hidden * in_pixels + b.in_channels * b.in_channels // b.masker_reduction + hidden * 2 * groups
        else:
            total += b.in_channels * in_pixels + sum(i * o for i, o in b.channel_masker_sizes())
    return total


def _official_outside(shape: ModelShape) -> tuple[int, int]:
    """Stem and head in the official convention: ``(op counter's, forward's)``."""
    stem = sum(c.macs for c in shape.stem)
    pool = shape.stem_pool
    pooling = pool.channels * pool.out_hw[0] * pool.out_hw[1] * pool.kernel * pool.kernel if pool is not None else 0
    last = shape.blocks[-1]
    head = shape.head.macs
    dense = stem + pooling + last.out_channels * last.out_hw[0] * last.out_hw[1] + head + shape.head.out_channels
    dynamic = stem + pooling + last.out_channels + head
    return dense, dynamic
