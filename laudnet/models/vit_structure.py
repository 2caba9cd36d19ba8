"""Static structure of vision transformers: token counts, widths, and each block's MACs formula.

A ViT's :class:`~laudnet.models.structure.ModelShape` has the patch embedding as its stem (a
strided convolution), one :class:`TransformerBlockShape` per block and the classifier as its head.
Blocks are grouped into the four "stages" of :class:`~laudnet.dynamic.spec.DynamicSpec`
(:func:`vit_stage`: DeiT's 12 blocks in groups of 3), so per-stage specs work as for CNNs.

MACs count the linear layers and the attention's two matrix products (``q kᵀ`` and ``attn v``,
quadratic in the tokens): per block and image, ``N (4 C² + 2 C M) + 2 N² C`` for ``N`` tokens
(class token included) of width ``C`` and an MLP of hidden width ``M``. This is
``torch.utils.flop_counter`` ÷ 2 on timm's model with its attention written as matmuls
(``attn.fused_attn = False``; the counter does not see the CPU's fused attention kernel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from ..dynamic.spec import NUM_STAGES, StageSpec, mode_parts
from ..dynamic.tokens import TokenMasker
from ..errors import UsageError
from .structure import ConvShape, ModelShape, conv_output_hw

Number = TypeVar("Number", float, torch.Tensor)


def vit_stage(index: int, depth: int) -> int:
    """The spec stage of block ``index`` of ``depth``: four equal groups (DeiT: blocks 0-2 are stage 0)."""
    if depth < NUM_STAGES:
        raise UsageError(f"a LAUD ViT needs at least {NUM_STAGES} blocks (one per spec stage), got depth {depth}")
    return index * NUM_STAGES // depth


@dataclass(frozen=True)
class TokenFractions:
    """What one ViT block computes, as fractions in [0, 1] (floats, or per-sample tensors).

    ``tokens``: of the block's tokens selected (class token included); ``heads``: of attention
    heads kept; ``attention`` / ``mlp``: whether (how often) each sub-block runs.
    """

    tokens: float = 1.0
    heads: float = 1.0
    attention: float = 1.0
    mlp: float = 1.0


@dataclass(frozen=True)
class TransformerBlockShape:
    """One pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    ``tokens`` counts the class token; ``grid`` is the patch grid. ``spec.channel_granularity``
    is the number of heads one head decision switches.
    """

    name: str
    stage: int
    tokens: int
    dim: int
    heads: int
    mlp_hidden: int
    grid: tuple[int, int]
    spec: StageSpec = field(default_factory=StageSpec)

    # What CNN-oriented readers of a block ask (BlockLatency): no stride, no projection shortcut.
    stride = 1
    has_projection = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_groups(self) -> int:
        """Head decisions: the heads in groups of ``channel_granularity``."""
        return self.heads // self.spec.channel_granularity

    def attention_macs(self, n: Number) -> Number:
        """MACs of the attention sub-block on ``n`` tokens with every head: qkv, the two products, proj."""
        return 4 * n * self.dim * self.dim + 2 * n * n * self.dim

    def mlp_macs(self, n: Number) -> Number:
        return 2 * n * self.dim * self.mlp_hidden

    @property
    def dense_macs(self) -> int:
        """MACs of the static block per image."""
        return self.attention_macs(self.tokens) + self.mlp_macs(self.tokens)

    def masker_macs(self) -> int:
        """MACs of the block's maskers per image: the token masker reads every patch token, the
        head and sub-block maskers the mean token (pooling is no MAC)."""
        parts = mode_parts(self.spec.mode)
        total = TokenMasker.token_macs(self.dim, self.patches) if "spatial" in parts else 0
        if "channel" in parts:
            total += self.dim * 2 * self.head_groups
        if "layer" in parts:
            total += self.dim * 2 * 2
        return total

    def dynamic_macs(self, f: TokenFractions) -> Number:
        """MACs per image at these fractions, maskers included. The attention's cost is quadratic
        in the selected tokens; skipped heads remove their share of qkv, the products and proj."""
        n = f.tokens * self.tokens
        return f.attention * f.heads * self.attention_macs(n) + f.mlp * self.mlp_macs(n) + self.masker_macs()

    def uniform(self, density: float) -> TokenFractions:
        """Every gate of the block's mode at ``density`` (the others on)."""
        parts = mode_parts(self.spec.mode)
        d = float(density)
        run = d if "layer" in parts else 1.0
        return TokenFractions(d if "spatial" in parts else 1.0, d if "channel" in parts else 1.0, run, run)


def vit_model_shape(model: nn.Module, input_hw: tuple[int, int], family: str = "vit") -> ModelShape:
    """The shape of a ViT with timm's layout (``patch_embed.proj``, ``blocks``, ``head``) at ``input_hw``."""
    conv = model.patch_embed.proj
    grid = conv_output_hw(input_hw, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    if min(grid) < 1:
        raise UsageError(f"input {input_hw[0]}x{input_hw[1]} is smaller than one {conv.kernel_size[0]}-pixel patch")
    stem = ConvShape("patch_embed.proj", conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                     conv.groups, tuple(input_hw), grid)
    tokens = int(getattr(model, "num_prefix_tokens", 1)) + grid[0] * grid[1]
    spec = getattr(model, "dynamic_spec", None)
    depth = len(model.blocks)
    blocks = []
    for i, block in enumerate(model.blocks):
        stage = vit_stage(i, depth)
        blocks.append(TransformerBlockShape(
            name=f"blocks.{i}", stage=stage, tokens=tokens, dim=block.attn.qkv.in_features, heads=block.attn.num_heads,
            mlp_hidden=block.mlp.fc1.out_features, grid=grid, spec=spec.stages[stage] if spec else StageSpec(),
        ))
    head = model.head
    if not isinstance(head, nn.Linear):
        raise UsageError(f"{type(model).__name__} has no classifier (num_classes=0): laudnet shapes classifiers")
    head_shape = ConvShape("head", head.in_features, head.out_features, 1, 1, 1, (1, 1), (1, 1))
    return ModelShape(getattr(model, "name", type(model).__name__), family, tuple(input_hw), (stem,), None,
                      tuple(blocks), head_shape)
