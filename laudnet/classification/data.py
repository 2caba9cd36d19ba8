"""Training and evaluation data: ImageNet-layout folders and the built-in synthetic data set.

The built-in data set needs no files: every image is drawn on the fly from its index and a
seed. Its class is the shape of one small object placed at a random position on a
cluttered background, so a network has to find the object, and spatial masks have
something to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from ..synthetic import SHAPES, Box, cluttered_background, shape_mask
from .config import TrainConfig
from ..errors import MissingFileError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class SyntheticShapes(Dataset):
    """Deterministic images of one small shape (the class) on a cluttered background.

    Args:
        size: number of samples.
        num_classes: how many of :data:`SHAPES` are used (2 to 8).
        image_size: side of the square images in pixels.
        object_size: side of the object's bounding box in pixels.
        seed: different seeds (and splits) give disjoint, reproducible samples.
        split: ``"train"`` or ``"val"``.
    """

    def __init__(
        self, size: int = 4096, num_classes: int = 6, image_size: int = 64, object_size: int = 14,
        clutter: int = 12, seed: int = 0, split: str = "train",
    ) -> None:
        if not 2 <= num_classes <= len(SHAPES):
            raise UsageError(f"num_classes must be between 2 and {len(SHAPES)}, got {num_classes}")
        if not 4 <= object_size < image_size:
            raise UsageError(f"object_size must be at least 4 and smaller than image_size={image_size}, got {object_size}")
        if split not in ("train", "val"):
            raise UsageError(f"split must be 'train' or 'val', got {split!r}")
        if size < 1:
            raise UsageError(f"size must be positive, got {size}")
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.object_size = object_size
        self.clutter = clutter
        self.seed = seed
        self.split = split
        self.classes = list(SHAPES[:num_classes])
        self._normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a data set of {self.size}")
        return np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])

    def label(self, index: int) -> int:
        return index % self.num_classes

    def object_box(self, index: int) -> Box:
        """Where sample ``index``'s object lies (the same box :meth:`render` draws in)."""
        top, left = (int(v) for v in self._rng(index).integers(0, self.image_size - self.object_size + 1, 2))
        return Box(top, left, top + self.object_size, left + self.object_size)

    def render(self, index: int) -> np.ndarray:
        """The image as ``(H, W, 3)`` uint8 (NumPy: no thread pool for such small arrays)."""
        rng = self._rng(index)
        top, left = rng.integers(0, self.image_size - self.object_size + 1, 2)
        box = Box(int(top), int(left), int(top) + self.object_size, int(left) + self.object_size)
        image = cluttered_background(rng, self.image_size, self.image_size, self.clutter)
        ys, xs = np.mgrid[0:self.image_size, 0:self.image_size].astype(np.float32)
        colour = 0.6 + 0.4 * rng.random(3)
        mask = shape_mask(SHAPES[self.label(index)], box, ys, xs)[..., None]
        image = image * (1 - mask) + colour * mask
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.render(index)).permute(2, 0, 1).float().div_(255)
        return self._normalize(image), self.label(index)


def imagenet_transforms(image_size: int, train: bool) -> transforms.Compose:
    """The standard torchvision ImageNet transforms: random-resized crop + flip, or resize + centre crop."""
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(int(round(image_size / 0.875))), transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


def image_folder(root: str | Path, split: str, image_size: int) -> datasets.ImageFolder:
    """``root/split`` as an ImageNet-layout data set (one folder per class), with clear errors."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise MissingFileError(f"data folder not found: {folder} (expected {root}/train and {root}/val, one folder per class)")
    classes = [d for d in folder.iterdir() if d.is_dir()]
    if not classes:
        raise UsageError(f"data folder {folder} has no class folders (expected one folder per class)")
    if not any(f.suffix.lower() in IMAGE_EXTENSIONS for d in classes for f in d.iterdir()):
        raise UsageError(f"data folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return datasets.ImageFolder(str(folder), transform=imagenet_transforms(image_size, split == "train"),
                                loader=read_rgb)


def read_rgb(path: str) -> Image.Image:
    """An image file as RGB; a truncated or unreadable file is a :class:`UsageError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from None


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    input_size: tuple[int, int]


def build_datasets(config: TrainConfig) -> DataBundle:
    """The built-in synthetic data (``data: synthetic``) or an ImageNet-layout folder."""
    if config.data == "synthetic":
        common = dict(num_classes=config.synthetic_classes, image_size=config.image_size,
                      object_size=config.synthetic_object_size, seed=config.seed)
        train = SyntheticShapes(size=config.synthetic_train_size, split="train", **common)
        val = SyntheticShapes(size=config.synthetic_val_size, split="val", **common)
        return DataBundle(train, val, config.synthetic_classes, (config.image_size, config.image_size))
    train = image_folder(config.data, "train", config.image_size)
    val = image_folder(config.data, "val", config.image_size)
    if train.classes != val.classes:
        raise UsageError(f"{config.data}: train/ and val/ have different class folders")
    return DataBundle(train, val, len(train.classes), (config.image_size, config.image_size))
