"""Where a block computes: from a coarse grid of spatial decisions to per-pixel masks.

A spatial masker decides per cell of ``S×S`` output pixels. The block's output (conv3)
and conv2 are computed on those pixels; conv1 is needed wherever conv2's 3×3 window
reads, so its mask is the output mask mapped back through conv2's stride and dilated by
its kernel. All functions are differentiable (straight-through gradients flow to the cell
decisions) and work for any feature size, including odd ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_size(out_hw: tuple[int, int], granularity: int) -> tuple[int, int]:
    """Number of mask cells along each side: ``ceil(H/S) × ceil(W/S)``."""
    return (math.ceil(out_hw[0] / granularity), math.ceil(out_hw[1] / granularity))


def expand_cells(cells: torch.Tensor, granularity: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Expand a ``(B, 1, gh, gw)`` cell mask to pixels ``(B, 1, H, W)`` (contiguous); cells at the border are cropped.

    A single cell (layer skipping) stays ``(B, 1, 1, 1)`` and broadcasts.
    """
    if cells.shape[-2:] == (1, 1):
        return cells
    pixels = cells.repeat_interleave(granularity, dim=2).repeat_interleave(granularity, dim=3)
    if tuple(pixels.shape[-2:]) == tuple(out_hw):
        return pixels
    return pixels[:, :, : out_hw[0], : out_hw[1]].contiguous()  # cropped, in one block of memory


def input_mask(out_mask: torch.Tensor, in_hw: tuple[int, int], kernel: int = 3, stride: int = 1) -> torch.Tensor:
    """Input positions a ``kernel×kernel`` conv (padding ``kernel//2``, ``stride``) reads to produce ``out_mask``.

    ``out_mask`` is ``(B, 1, Ho, Wo)`` with ``Ho = ceil(H / stride)``; the result is
    ``(B, 1, H, W)``. A broadcastable ``(B, 1, 1, 1)`` mask (a whole-block gate) is
    returned as is, since a fully computed output reads every input position.
    """
    if kernel % 2 != 1:
        raise ValueError(f"input_mask supports odd kernels with 'same' padding, got kernel={kernel}")
    if out_mask.shape[-2:] == (1, 1) and tuple(in_hw) != (1, 1):
        return out_mask
    if stride > 1:
        placed = out_mask.new_zeros(out_mask.shape[:2] + tuple(in_hw))
        placed[:, :, ::stride, ::stride] = out_mask
    else:
        placed = out_mask
    if kernel == 1:
        return placed
    return F.max_pool2d(placed, kernel_size=kernel, stride=1, padding=kernel // 2)
