"""Spatial masks over images: where a dynamic backbone chose to compute."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..classification import TrainConfig, build_datasets
from ..classification.data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UsageError
from ..io import PathLike, atomic_open, load_checkpoint
from ..models import model_from_checkpoint


def mask_overlay(image: np.ndarray, cells: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """Darken the parts of ``image`` (``H×W×3`` uint8) whose mask cells are off.

    ``cells`` is one block's ``(gh, gw)`` (or ``(1, gh, gw)``) 0/1 cell mask; it is stretched
    over the whole image, so cell borders line up with the feature map's receptive grid.
    """
    grid = cells.detach().float().reshape(1, 1, *cells.shape[-2:])
    h, w = image.shape[:2]
    on = F.interpolate(grid, size=(h, w), mode="nearest")[0, 0].cpu().numpy()[..., None]
    shaded = image.astype(np.float32) * (1 - alpha * (1 - on))
    return shaded.clip(0, 255).astype(np.uint8)


def save_mask_grid(path: PathLike, images: Sequence[np.ndarray], rows: Sequence[Sequence[torch.Tensor]],
                   row_titles: Sequence[str], column_titles: Sequence[str] | None = None) -> None:
    """A PNG with one column per image and one row per block: the image with that block's mask.

    ``rows[r][c]`` is block ``r``'s cell mask for image ``c``; the first row shows the images.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows) + 1, len(images)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows), squeeze=False)
    for c, image in enumerate(images):
        axes[0][c].imshow(image)
        if column_titles is not None:
            axes[0][c].set_title(column_titles[c], fontsize=8)
        for r, row in enumerate(rows):
            cells = row[c]
            density = float(cells.float().mean())
            axes[r + 1][c].imshow(mask_overlay(image, cells))
            axes[r + 1][c].set_title(f"{density:.0%}", fontsize=7)
    for r, title in enumerate(["input", *row_titles]):
        axes[r][0].set_ylabel(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of a ``(3, H, W)`` tensor: ``H×W×3`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def save_checkpoint_masks(checkpoint: PathLike, output: PathLike, *, data: str | None = None, images: int = 8,
                          all_blocks: bool = False) -> tuple[int, int]:
    """Draw a classification checkpoint's spatial masks over ``images`` of its validation data (or ``data``):
    the first block of each stage, or every block. Returns ``(blocks, images)`` drawn."""
    if images < 1:
        raise UsageError(f"images must be positive, got {images}")
    config = TrainConfig.from_checkpoint(load_checkpoint(checkpoint), data=data)
    model = model_from_checkpoint(checkpoint).eval()
    val = build_datasets(config).val
    count = min(images, len(val))
    samples = [val[i] for i in range(count)]
    batch = torch.stack([image for image, _ in samples])
    with torch.no_grad():
        stats = model(batch, return_stats=True).stats
    blocks = [b for b in stats.blocks if b.spatial_mask is not None]
    if not blocks:
        raise UsageError(f"{checkpoint} has no spatial or layer dynamics to show (mode {model.dynamic_spec.describe()})")
    if not all_blocks:
        firsts = {}
        for block in blocks:
            firsts.setdefault(block.stage, block)
        blocks = list(firsts.values())
    rows = [[block.spatial_mask[i, 0] for i in range(count)] for block in blocks]
    classes = getattr(val, "classes", None)
    titles = [classes[label] if classes else str(label) for _, label in samples]
    save_mask_grid(output, [denormalize(image) for image in batch], rows, [b.name for b in blocks], titles)
    return len(blocks), count
