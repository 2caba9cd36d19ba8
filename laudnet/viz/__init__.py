"""Plots and image overlays."""

from .masks import mask_overlay, save_mask_grid

__all__ = ["mask_overlay", "save_mask_grid"]
