"""``laudnet viz masks``: a trained model's spatial masks drawn over images."""

from __future__ import annotations

import argparse

from ..viz import save_checkpoint_masks
from .common import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("viz", help="pictures of what a model computes")
    commands = group.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    p = commands.add_parser("masks", help="draw a checkpoint's spatial masks over validation images")
    p.add_argument("--checkpoint", required=True, help="a laudnet (or official LAUDNet) checkpoint with spatial / layer dynamics")
    p.add_argument("--data", default=None, help="'synthetic' or an ImageNet-layout folder (default: the training data)")
    p.add_argument("--images", type=positive_int, default=8, help="how many validation images")
    p.add_argument("--all-blocks", action="store_true", help="every block, not only the first of each stage")
    p.add_argument("-o", "--output", default="masks.png", help="PNG to write")
    p.set_defaults(func=masks_command)


def masks_command(args: argparse.Namespace) -> int:
    blocks, images = save_checkpoint_masks(args.checkpoint, args.output, data=args.data, images=args.images,
                                           all_blocks=args.all_blocks)
    print(f"wrote {args.output}: {blocks} blocks x {images} images (dark = skipped)")
    return 0
