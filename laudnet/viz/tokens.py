"""Token masks of a LAUD-ViT over its images: which patches each block computed.

A ViT block's token mask lives on the patch grid (``BlockStats.spatial_mask``, ``(B, 1, gh, gw)``),
so drawn over the image each cell is one patch. :func:`computed_tokens` combines it with the
block's sub-block gates (a patch counts as computed when the attention or the MLP ran on it), and
:func:`save_token_masks` draws every (or each stage's first) block's map over the images with
:func:`~laudnet.viz.masks.save_mask_grid`, dark where the block skipped the patch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..dynamic.stats import BlockStats
from ..errors import UsageError
from ..io import PathLike
from ..models.vit import LaudViT
from .masks import denormalize, save_mask_grid


def computed_tokens(stats: BlockStats, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, gh, gw)`` 0/1: the patches on which ``stats``' block ran its attention or its MLP.

    ``conv1_density`` / ``conv3_density`` over ``conv2_density`` are the sub-blocks' gates (see
    :mod:`laudnet.models.vit`); a block without token masks selects every patch.
    """
    batch = stats.conv2_density.shape[0]
    if stats.spatial_mask is not None:
        tokens = stats.spatial_mask[:, 0].float()
    else:
        tokens = torch.ones(batch, *grid, device=stats.conv2_density.device)
    selected = stats.conv2_density.clamp_min(1e-12)
    ran = torch.maximum(stats.conv1_density / selected, stats.conv3_density / selected).clamp(0, 1)
    return tokens * ran.float().round()[:, None, None]


@torch.no_grad()
def save_token_masks(model: LaudViT, images: torch.Tensor, path: PathLike, *, all_blocks: bool = False,
                     titles: Sequence[str] | None = None) -> int:
    """Draw the patches ``model`` computed in each block over ``images`` (ImageNet-normalised
    ``(B, 3, H, W)``) as a PNG: one row per block (every block, or each stage's first), one column per
    image. Returns the number of blocks drawn."""
    if not isinstance(model, LaudViT):
        raise UsageError(f"save_token_masks draws LAUD-ViT token masks, got {type(model).__name__}")
    if model.dynamic_spec.is_static:
        raise UsageError(f"{model.name} is static: it computes every token of every block")
    model.eval()
    stats = model(images, return_stats=True).stats
    grid = model.patch_embed.grid_size
    blocks = [b for b in stats.blocks if b.dynamic]
    if not all_blocks:
        firsts: dict[int, BlockStats] = {}
        for block in blocks:
            firsts.setdefault(block.stage, block)
        blocks = list(firsts.values())
    maps = [computed_tokens(block, tuple(grid)).cpu() for block in blocks]
    rows = [[m[i] for i in range(images.shape[0])] for m in maps]
    save_mask_grid(path, [denormalize(image.cpu()) for image in images], rows, [b.name for b in blocks], titles)
    return len(blocks)
