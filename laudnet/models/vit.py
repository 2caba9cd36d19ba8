"""LAUD-ViT: timm's DeiT with token, head and sub-block skipping in every block.

:class:`LaudViT` is timm's ``VisionTransformer`` (built by timm with ``pretrained=False``) whose
modules it adopts under timm's names, so a timm checkpoint's state_dict loads as it is; maskers add
``blocks.N.masker_token`` / ``masker_head`` / ``masker_layer`` parameters. Each block
(:class:`LaudViTBlock`) runs as its stage's mode says (``vit_stage``: 12 blocks in 4 groups of 3):

* ``spatial`` (alias ``token``): a token masker picks the patch tokens the block computes (the
  class token always does); the others pass through the block unchanged: they are no key of the
  attention and their outputs are the inputs, exactly.
* ``channel`` (alias ``head``): a head masker on the mean token keeps groups of heads; a skipped
  head contributes nothing to ``proj`` (the engine slices it out of qkv and proj).
* ``layer``: a masker on the mean token gates the attention and the MLP sub-blocks separately.
* combinations (``spatial+channel+layer``, ...): all of the above in one block.

The head and sub-block maskers read the mean of the block's input tokens (the class token alone
would be the same for every image in the first block).

With every gate on, each mode computes timm's model. Statistics reuse the CNN fields of
:class:`~laudnet.dynamic.stats.BlockStats` (so the trainer, its sparsity loss and
``DensityMeter`` work unchanged): ``conv1_density`` is the fraction of the block's tokens the
attention computes (tokens × attention gate), ``conv2_density`` the fraction of tokens selected,
``conv3_density`` the fraction the MLP computes (tokens × MLP gate), ``channel_density`` the
fraction of heads kept; ``spatial_mask`` is the patch-token mask on the patch grid ``(B, 1, gh, gw)``
and ``channel_mask`` the head-group mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..dynamic.spec import COMBINED_MODES, MODES, DynamicSpec, PerStage, StageSpec, mode_parts
from ..dynamic.stats import BlockStats
from ..dynamic.tokens import HeadMasker, SubLayerMasker, TokenMasker
from ..errors import UsageError
from ..io import PathLike, load_checkpoint
from .backbone import DynamicBackbone
from .family import Family, StemLayout, register_family
from .registry import register_model
from .structure import ModelShape
from .vit_structure import TokenFractions, TransformerBlockShape, vit_model_shape, vit_stage
from .weights import extract_state_dict, load_state_dict

log = logging.getLogger(__name__)

# The timm modules a LAUD-ViT adopts under their timm names (parameters: cls_token, pos_embed).
_MODEL_MODULES = ("patch_embed", "pos_drop", "patch_drop", "norm_pre", "norm", "fc_norm", "head_drop", "head")
_BLOCK_MODULES = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass(frozen=True)
class TransformerLayout:
    """A pre-norm transformer block's layers: ``x + ls1(proj(attention(qkv(norm1(x)))))``, then
    ``x + ls2(fc2(act(fc1(norm2(x)))))``; ``heads`` attention heads. ``plain``: no q/k norm, output norm, gate
    or layer scale (DeiT's layout, what the sparse engine runs)."""

    norm1: nn.LayerNorm
    qkv: nn.Linear
    proj: nn.Linear
    norm2: nn.LayerNorm
    fc1: nn.Linear
    act: nn.Module
    fc2: nn.Linear
    heads: int
    plain: bool

    @property
    def dim(self) -> int:
        return self.qkv.in_features


class ViTFamily(Family):
    """timm's ViT layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N`` with ``norm1``,
    ``attn.qkv``/``attn.proj``, ``norm2``, ``mlp.fc1``/``mlp.fc2``, then ``norm`` and ``head``);
    LAUD-ViT keeps every name. Blocks group into four spec stages (:func:`vit_stage`)."""

    name = "vit"
    modes = MODES + COMBINED_MODES

    def stem(self, model: nn.Module) -> StemLayout:
        return StemLayout("patch_embed.proj", model.patch_embed.proj, model.patch_embed.norm, nn.Identity(), None)

    def stages(self, model: nn.Module) -> list[nn.Sequential]:
        depth = len(model.blocks)
        groups: list[list[nn.Module]] = [[] for _ in range(4)]
        for i, block in enumerate(model.blocks):
            groups[vit_stage(i, depth)].append(block)
        return [nn.Sequential(*group) for group in groups]

    def block_names(self, model: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
        depth = len(model.blocks)
        for i, block in enumerate(model.blocks):
            yield f"blocks.{i}", vit_stage(i, depth), block

    def block(self, block: nn.Module) -> TransformerLayout:
        attn, mlp = block.attn, block.mlp
        plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm, block.ls1,
                                                            block.ls2)) and getattr(attn, "gate", None) is None
        return TransformerLayout(block.norm1, attn.qkv, attn.proj, block.norm2, mlp.fc1, mlp.act, mlp.fc2,
                                 attn.num_heads, plain)

    def head(self, model: nn.Module) -> nn.Linear:
        return model.head

    def shape(self, model: nn.Module, input_hw: tuple[int, int]) -> ModelShape:
        return vit_model_shape(model, input_hw, self.name)


VIT = ViTFamily()


@dataclass
class TokenMasks:
    """The decisions of one ViT block for a batch (``None`` where the block has no such masker).

    ``tokens``: ``(B, N)`` 0/1, the class token always 1; ``head_groups``: ``(B, groups)`` and
    ``heads``: ``(B, H)``; ``attention`` / ``mlp``: ``(B,)`` sub-block gates.
    """

    tokens: torch.Tensor | None
    head_groups: torch.Tensor | None
    heads: torch.Tensor | None
    attention: torch.Tensor | None
    mlp: torch.Tensor | None


class LaudViTBlock(nn.Module):
    """A timm ViT block (its modules adopted under their names) with the maskers its spec asks for."""

    family = VIT

    def __init__(self, block: nn.Module, name: str, stage: int, spec: StageSpec, grid: tuple[int, int]) -> None:
        super().__init__()
        for module in _BLOCK_MODULES:
            setattr(self, module, getattr(block, module))
        self.block_name = name
        self.stage = stage
        self.spec = spec
        self.grid = tuple(grid)  # the patch grid (the model's input size is fixed)
        layout = self.layout()
        if layout.qkv.out_features != 3 * layout.dim or getattr(block.attn, "gate", None) is not None:
            raise UsageError(f"{name}: LAUD-ViT needs timm's plain Attention (qkv of 3 x dim, no gate)")
        parts = mode_parts(spec.mode)
        dim, heads = layout.dim, layout.heads
        if "spatial" in parts and spec.spatial_granularity != 1:
            raise UsageError(f"{name}: a ViT decides one token at a time: spatial_granularity must be 1, "
                             f"got {spec.spatial_granularity}")
        if "channel" in parts and heads % spec.channel_granularity != 0:
            raise UsageError(f"{name}: channel_granularity G={spec.channel_granularity} (heads per decision) must "
                             f"divide the {heads} heads")
        self.masker_token = TokenMasker(dim) if "spatial" in parts else None
        self.masker_head = HeadMasker(dim, heads // spec.channel_granularity) if "channel" in parts else None
        self.masker_layer = SubLayerMasker(dim) if "layer" in parts else None
        self.last_stats: BlockStats | None = None

    def layout(self) -> TransformerLayout:
        return self.family.block(self)

    def shape(self) -> TransformerBlockShape:
        layout = self.layout()
        return TransformerBlockShape(self.block_name, self.stage, 1 + self.grid[0] * self.grid[1], layout.dim,
                                     layout.heads, layout.fc1.out_features, self.grid, self.spec)

    def compute_masks(self, x: torch.Tensor) -> TokenMasks:
        """Run the maskers on block input ``x`` ``(B, N, C)`` (the class token first)."""
        tokens = groups = heads = attention = mlp = None
        summary = x.mean(dim=1)
        if self.masker_token is not None:
            patches = self.masker_token(x[:, 1:])
            tokens = torch.cat([patches.new_ones(x.shape[0], 1), patches], dim=1)
        if self.masker_head is not None:
            groups = self.masker_head(summary)
            heads = groups.repeat_interleave(self.spec.channel_granularity, dim=1)
        if self.masker_layer is not None:
            gates = self.masker_layer(summary)
            attention, mlp = gates[:, 0], gates[:, 1]
        return TokenMasks(tokens, groups, heads, attention, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output; what it computed is left in :attr:`last_stats` (as CNN blocks do)."""
        masks = self.compute_masks(x)
        keep = masks.tokens[..., None] if masks.tokens is not None else None
        branch = self.drop_path1(self.ls1(self._attention(self.norm1(x), masks)))
        x = x + _gated(branch, keep, masks.attention)
        branch = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x = x + _gated(branch, keep, masks.mlp)
        self.last_stats = self._stats(masks, x)
        return x

    def _attention(self, h: torch.Tensor, masks: TokenMasks) -> torch.Tensor:
        """timm's attention, where unselected tokens are no keys and skipped heads output zeros."""
        attn = self.attn
        b, n, c = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        keys = None if masks.tokens is None else (masks.tokens.detach() > 0.5)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys,
                                             dropout_p=attn.attn_drop.p if self.training else 0.0)
        if masks.heads is not None:
            out = out * masks.heads[:, :, None, None]
        return attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, n, c))))

    def _stats(self, masks: TokenMasks, x: torch.Tensor) -> BlockStats:
        b = x.shape[0]
        shape = self.shape()
        ones = x.new_ones(b, dtype=torch.float64)
        tokens = masks.tokens.double().mean(dim=1) if masks.tokens is not None else ones
        heads = masks.head_groups.double().mean(dim=1) if masks.head_groups is not None else ones
        attention = masks.attention.double() if masks.attention is not None else ones
        mlp = masks.mlp.double() if masks.mlp is not None else ones
        dynamic = shape.dynamic_macs(TokenFractions(tokens, heads, attention, mlp))
        token_map = masks.tokens[:, 1:].reshape(b, 1, *self.grid) if masks.tokens is not None else None
        return BlockStats(
            name=self.block_name, stage=self.stage, dynamic=self.spec.is_dynamic,
            conv1_density=tokens * attention, conv2_density=tokens, conv3_density=tokens * mlp,
            channel_density=heads, dense_macs=shape.dense_macs, dynamic_macs=dynamic,
            spatial_mask=token_map, channel_mask=masks.head_groups,
        )


def _gated(branch: torch.Tensor, keep: torch.Tensor | None, gate: torch.Tensor | None) -> torch.Tensor:
    if keep is not None:
        branch = branch * keep
    if gate is not None:
        branch = branch * gate[:, None, None]
    return branch


class LaudViT(DynamicBackbone):
    """timm's ViT ``arch`` (class token, token pooling, learned position embedding) with dynamic blocks.

    ``timm_kwargs`` go to ``timm.create_model`` (``img_size``, ``patch_size``, ``embed_dim``,
    ``depth``, ``num_heads``, ``mlp_ratio``, ``drop_path_rate``, ...), for small variants such as
    the quickstart's; timm's weights need the defaults.
    """

    def __init__(self, arch: str, spec: DynamicSpec, num_classes: int = 1000, name: str = "laud_vit",
                 **timm_kwargs) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
        try:
            vit = timm.create_model(arch, pretrained=False, num_classes=num_classes, **timm_kwargs)
        except TypeError as error:
            raise UsageError(f"{name}: {error}") from None
        if (vit.cls_token is None or vit.reg_token is not None or vit.global_pool != "token" or vit.no_embed_class
                or vit.attn_pool is not None or vit.dynamic_img_size):
            raise UsageError(f"{name}: LAUD-ViT needs a class token with token pooling and a position embedding "
                             "that covers it (DeiT's layout)")
        self.name = name
        self.dynamic_spec = spec
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        for module in _MODEL_MODULES:
            setattr(self, module, getattr(vit, module))
        self.num_prefix_tokens = 1
        depth = len(vit.blocks)
        self.blocks = nn.Sequential(*(
            LaudViTBlock(block, f"blocks.{i}", vit_stage(i, depth), spec.stages[vit_stage(i, depth)],
                         vit.patch_embed.grid_size)
            for i, block in enumerate(vit.blocks)
        ))

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.img_size)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token and position embedding: ``(B, N, C)`` tokens."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise UsageError(f"{self.name} takes {self.img_size[0]}x{self.img_size[1]} images (its position "
                             f"embedding), got {x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(self.norm(x)[:, 0])))


register_family(VIT, LaudViT, VisionTransformer)


def load_timm_weights(model: LaudViT, path: PathLike, strict_spec: bool = True) -> None:
    """Load a timm (or DeiT) checkpoint file into ``model``; masker weights may be absent.

    ``strict_spec=False`` drops masker weights the model has no place for (a checkpoint of another mode).
    """
    state = extract_state_dict(load_checkpoint(path))
    if not strict_spec:
        own = model.state_dict()
        dropped = [k for k in state if ".masker_" in k and k not in own]
        if dropped:
            log.warning("%s: %d masker tensors of another dynamic spec left out", path, len(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    load_state_dict(model, state, str(path))


def _build(arch: str, name: str, weights: PathLike | None, mode: PerStage, spatial_granularity: PerStage,
           channel_granularity: PerStage | None, strict_spec: bool, kwargs: dict) -> LaudViT:
    spec = DynamicSpec.build(mode, spatial_granularity, 1 if channel_granularity is None else channel_granularity,
                             dash_combinations=True)
    model = LaudViT(arch, spec, name=name, **kwargs)
    if weights is not None:
        load_timm_weights(model, weights, strict_spec)
    return model


@register_model
def laud_deit_small(
    *, weights: PathLike | None = None, progress: bool = True, strict_spec: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudViT:
    """LAUD-DeiT-S (timm ``deit_small_patch16_224``). ``weights``: a timm checkpoint file (nothing is
    downloaded; ``progress`` is accepted for the registry's interface). ``G``: heads per decision."""
    return _build("deit_small_patch16_224", "laud_deit_small", weights, mode, spatial_granularity,
                  channel_granularity, strict_spec, kwargs)


@register_model
def laud_deit_base(
    *, weights: PathLike | None = None, progress: bool = True, strict_spec: bool = True, mode: PerStage = "static",
    spatial_granularity: PerStage = 1, channel_granularity: PerStage | None = None, **kwargs,
) -> LaudViT:
    """LAUD-DeiT-B (timm ``deit_base_patch16_224``), as :func:`laud_deit_small`."""
    return _build("deit_base_patch16_224", "laud_deit_base", weights, mode, spatial_granularity,
                  channel_granularity, strict_spec, kwargs)
