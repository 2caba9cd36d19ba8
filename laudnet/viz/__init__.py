"""Plots and image overlays."""

from .masks import denormalize, mask_overlay, save_checkpoint_masks, save_mask_grid

__all__ = ["denormalize", "mask_overlay", "save_checkpoint_masks", "save_mask_grid"]
