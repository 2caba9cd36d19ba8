"""Run a LAUD detector on one image and draw what it found (and where its backbone computed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import UsageError

from ..io import PathLike, atomic_open
from ..viz.masks import mask_overlay
from .models import laud_backbone


@dataclass
class BackboneMask:
    """One block's spatial decisions on the input image: ``H×W`` 0/1 at the image's resolution."""

    block: str
    pixels: torch.Tensor

    @property
    def density(self) -> float:
        return float(self.pixels.float().mean())


@dataclass
class Prediction:
    """A detector's output for one image (``masks``: ``N×H×W`` probabilities, Mask R-CNN only) and
    the spatial masks of the first dynamic block of each backbone stage (empty without spatial dynamics)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor | None
    macs_ratio: float
    backbone_masks: list[BackboneMask]


def read_image(path: PathLike) -> np.ndarray:
    """An image file as ``H×W×3`` uint8 RGB, with one clear error for a file that is not an image."""
    try:
        with Image.open(path) as file:
            return np.array(file.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from None


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 as the ``3×H×W`` float image in [0, 1] a detector takes."""
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor) -> Prediction:
    """Detect objects in a ``3×H×W`` image with values in [0, 1]."""
    model.eval()
    output = model([image])[0]
    stats = laud_backbone(model).last_stats
    # The backbone saw the image resized and padded to a batch; map its cells back onto the image.
    batch = model.transform([image])[0]
    resized_hw = batch.image_sizes[0]
    padded_hw = tuple(batch.tensors.shape[-2:])
    firsts = {}
    for block in stats.blocks:
        if block.spatial_mask is not None:
            firsts.setdefault(block.stage, block)
    masks = []
    for block in firsts.values():
        cells = block.spatial_mask[:1].float()
        pixels = F.interpolate(cells, size=padded_hw, mode="nearest")[..., :resized_hw[0], :resized_hw[1]]
        pixels = F.interpolate(pixels, size=tuple(image.shape[-2:]), mode="nearest")[0, 0]
        masks.append(BackboneMask(block.name, pixels))
    return Prediction(boxes=output["boxes"], labels=output["labels"], scores=output["scores"],
                      masks=output["masks"][:, 0] if "masks" in output else None,
                      macs_ratio=float(stats.macs_ratio[0]), backbone_masks=masks)


def save_prediction(path: PathLike, image: np.ndarray, prediction: Prediction, classes: list[str],
                    score_threshold: float = 0.5, show_backbone_masks: bool = False) -> int:
    """Write a PNG of ``image`` (``H×W×3`` uint8) with the boxes, masks and labels scoring at least
    ``score_threshold`` and, optionally, one panel per backbone stage with its spatial mask.

    Returns how many detections were drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = torch.nonzero(prediction.scores >= score_threshold).flatten().tolist()
    colours = plt.get_cmap("tab10")
    shown = image.astype(np.float32)
    if prediction.masks is not None:
        for i in keep:
            on = (prediction.masks[i] > 0.5).cpu().numpy()[..., None]
            colour = np.array(colours(int(prediction.labels[i]) % 10)[:3]) * 255
            shown = np.where(on, 0.5 * shown + 0.5 * colour, shown)
    panels = [("detections", shown.clip(0, 255).astype(np.uint8))]
    if show_backbone_masks:
        panels += [(f"{m.block}: {m.density:.0%}", mask_overlay(image, m.pixels)) for m in prediction.backbone_masks]
    height, width = image.shape[:2]
    scale = 4.0 / max(height, width)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * width * scale + 0.2, height * scale + 0.5),
                             squeeze=False)
    for ax, (title, picture) in zip(axes[0], panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[0][0]
    for i in keep:
        x0, y0, x1, y1 = prediction.boxes[i].tolist()
        label = int(prediction.labels[i])
        colour = colours(label % 10)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        name = classes[label - 1] if 0 < label <= len(classes) else str(label)
        ax.text(x0, y0, f"{name} {float(prediction.scores[i]):.2f}", fontsize=7, color="white", va="bottom",
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return len(keep)
