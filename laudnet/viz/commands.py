"""``laudnet show-masks``: a trained model's spatial masks drawn over images."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..io import load_checkpoint
from ..models import model_from_checkpoint
from ..train.config import config_from_checkpoint
from ..train.data import IMAGENET_MEAN, IMAGENET_STD, build_datasets
from .masks import save_mask_grid
from ..errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show-masks", help="draw a checkpoint's spatial masks over validation images")
    p.add_argument("--checkpoint", required=True, help="a laudnet checkpoint with spatial / layer dynamics")
    p.add_argument("--data", default=None, help="'synthetic' or an ImageNet-layout folder (default: the training data)")
    p.add_argument("--images", type=int, default=8, help="how many validation images")
    p.add_argument("--all-blocks", action="store_true", help="every block, not only the first of each stage")
    p.add_argument("-o", "--output", default="masks.png", help="PNG to write")
    p.set_defaults(func=_cmd_show_masks)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of a ``(3, H, W)`` tensor."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _cmd_show_masks(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise UsageError(f"--images must be positive, got {args.images}")
    config = config_from_checkpoint(load_checkpoint(args.checkpoint), data=args.data)
    model = model_from_checkpoint(args.checkpoint).eval()
    val = build_datasets(config).val
    count = min(args.images, len(val))
    samples = [val[i] for i in range(count)]
    images = torch.stack([image for image, _ in samples])
    with torch.no_grad():
        stats = model(images, return_stats=True).stats
    blocks = [b for b in stats.blocks if b.spatial_mask is not None]
    if not blocks:
        raise UsageError(f"{args.checkpoint} has no spatial or layer dynamics to show (mode {model.dynamic_spec.describe()})")
    if not args.all_blocks:
        firsts = {}
        for block in blocks:
            firsts.setdefault(block.stage, block)
        blocks = list(firsts.values())
    rows = [[block.spatial_mask[i, 0] for i in range(count)] for block in blocks]
    classes = getattr(val, "classes", None)
    titles = [classes[label] if classes else str(label) for _, label in samples]
    save_mask_grid(args.output, [to_uint8(image) for image in images], rows, [b.name for b in blocks], titles)
    print(f"wrote {args.output}: {len(blocks)} blocks x {count} images (dark = skipped)")
    return 0
