"""Detection data in COCO format: annotation files with an image folder, and built-in synthetic shapes.

Both data sets hold COCO dicts (``images``, ``annotations``, ``categories``) and turn an
image's annotations into torchvision's detection targets in one place
(:func:`annotations_to_target`): ``boxes`` (x1, y1, x2, y2 pixels), ``labels`` (1…K in
category-id order; 0 is the background), ``masks`` (N×H×W uint8, when asked for) and
``image_id``. Crowd regions are left out of training targets; COCO evaluation reads them
from the ground truth (:meth:`DetectionDataset.coco`).

The synthetic data needs no files: every image is drawn from its index and a seed,
with a random size and several non-overlapping shapes of random class, size and colour on a
cluttered background; ``export`` writes it out as a COCO folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..io import PathLike, atomic_open, write_text
from ..synthetic import SHAPES, Box, cluttered_background, shape_mask
from ..errors import MissingFileError, UsageError

Target = dict[str, torch.Tensor]


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` index over a loaded COCO dict (pycocotools prints; the library must not)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an ``H×W`` uint8 mask."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = segmentation
    else:
        raise UsageError(f"unreadable segmentation {str(segmentation)[:80]} (expected polygons or RLE)")
    with warnings.catch_warnings():  # pycocotools' decoder predates NumPy 2's copy keyword; harmless
        warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """An ``H×W`` 0/1 mask as compressed RLE with text counts (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def clamped_box(bbox: list, height: int, width: int) -> list[float]:
    """A COCO ``[x, y, width, height]`` box as ``[x1, y1, x2, y2]`` inside a ``height × width`` image."""
    x, y, w, h = (float(v) for v in bbox)
    return [min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width),
            min(max(y + h, 0.0), height)]


def usable_box(box: list[float]) -> bool:
    """Whether an ``[x1, y1, x2, y2]`` box covers at least one pixel in each direction (a training target)."""
    return box[2] - box[0] >= 1 and box[3] - box[1] >= 1


def annotations_to_target(annotations: list[dict], image_id: int, height: int, width: int,
                          labels: dict[int, int], masks: bool) -> Target:
    """torchvision's detection target from one image's COCO annotations: crowds, and boxes under a pixel
    once clamped to the image (torchvision's detectors refuse empty boxes), are left out."""
    kept, clamped = [], []
    for a in annotations:
        box = clamped_box(a["bbox"], height, width)
        if not a.get("iscrowd", 0) and usable_box(box):
            kept.append(a)
            clamped.append(box)
    boxes = torch.tensor(clamped, dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": boxes, "labels": torch.tensor([labels[a["category_id"]] for a in kept], dtype=torch.int64),
              "image_id": torch.tensor(image_id)}
    if masks:
        for a in kept:
            if "segmentation" not in a:
                raise UsageError(f"annotation {a.get('id')} of image {image_id} has no segmentation; "
                                 "Mask R-CNN needs instance masks")
        decoded = [decode_segmentation(a["segmentation"], height, width) for a in kept]
        target["masks"] = torch.from_numpy(np.stack(decoded)) if decoded else torch.zeros((0, height, width), dtype=torch.uint8)
    return target


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror an image and its target left-right."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Lists of images (of any sizes) and targets, as torchvision's detectors take them."""
    return [image for image, _ in batch], [target for _, target in batch]


class DetectionDataset(Dataset):
    """What detection data sets share: COCO categories, targets, flips and the ground truth.

    Subclasses set :attr:`dataset` (a COCO dict) and implement :meth:`load_image`.
    """

    dataset: dict
    masks: bool
    train: bool

    def _index(self) -> None:
        self.category_ids = sorted(c["id"] for c in self.dataset["categories"])
        names = {c["id"]: c.get("name", str(c["id"])) for c in self.dataset["categories"]}
        self.classes = [names[i] for i in self.category_ids]
        self.labels = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.images = sorted(self.dataset["images"], key=lambda image: image["id"])
        self.annotations: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for a in self.dataset["annotations"]:
            self.annotations.setdefault(a["image_id"], []).append(a)
        self._coco: COCO | None = None

    def unusable_boxes(self) -> tuple[int, int]:
        """``(unusable, total)`` non-crowd boxes: those under a pixel once clamped to their image's declared size."""
        sizes = {image["id"]: (image["height"], image["width"]) for image in self.images}
        boxes = [clamped_box(a["bbox"], *sizes[a["image_id"]]) for a in self.dataset["annotations"]
                 if not a.get("iscrowd", 0)]
        return sum(not usable_box(b) for b in boxes), len(boxes)

    @property
    def num_classes(self) -> int:
        """Classes including the background, as the detectors count them."""
        return len(self.classes) + 1

    def coco(self) -> COCO:
        """The ground truth as a pycocotools ``COCO`` object, for evaluation."""
        if self._coco is None:
            self._coco = quiet_coco(self.dataset)
        return self._coco

    def load_image(self, index: int) -> np.ndarray:
        """Image ``index`` as ``H×W×3`` uint8."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info = self.images[index]
        array = self.load_image(index)
        height, width = array.shape[:2]
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255)
        target = annotations_to_target(self.annotations[info["id"]], info["id"], height, width, self.labels, self.masks)
        if self.train and torch.rand(()) < 0.5:
            image, target = hflip(image, target)
        return image, target


class CocoDetection(DetectionDataset):
    """A COCO-format annotation file and its image folder (e.g. COCO 2017 ``instances_val2017.json``
    with ``val2017/``). Problems are reported up front: a missing or malformed file, missing
    images, annotations of unknown images or categories."""

    def __init__(self, annotation_file: PathLike, image_folder: PathLike, train: bool = False,
                 masks: bool = False) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_folder = Path(image_folder)
        self.train = train
        self.masks = masks
        self.dataset = read_coco_json(self.annotation_file)
        if not self.image_folder.is_dir():
            raise MissingFileError(f"image folder not found: {self.image_folder} (for {self.annotation_file})")
        self._index()
        missing = [image["file_name"] for image in self.images if not (self.image_folder / image["file_name"]).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            raise MissingFileError(f"{len(missing)} of {len(self.images)} images listed in {self.annotation_file} "
                                    f"are missing from {self.image_folder}: {shown}")
        unusable, total = self.unusable_boxes()
        if train and total and unusable == total:
            raise UsageError(f"annotation file {self.annotation_file}: none of its {total} boxes is usable (each is "
                             "under a pixel once clamped to its image): there is nothing to train on")
        if unusable:
            warnings.warn(f"{self.annotation_file}: {unusable} of {total} boxes lie outside their image or are under "
                          "a pixel; they are left out of the targets", UserWarning, stacklevel=2)

    def load_image(self, index: int) -> np.ndarray:
        path = self.image_folder / self.images[index]["file_name"]
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from None


def read_coco_json(path: Path) -> dict:
    """Read and check a COCO annotation file; errors name the file and what is wrong."""
    if not path.is_file():
        raise MissingFileError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"annotation file {path} is not valid JSON: {error}") from None
    problem = _coco_problem(data)
    if problem:
        raise UsageError(f"annotation file {path} {problem}")
    return data


def _coco_problem(data) -> str | None:
    """What keeps ``data`` from being a usable COCO detection dict, or ``None``."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        return "is not in COCO format (expected lists 'images', 'annotations' and 'categories')"
    if not data["categories"]:
        return "has no categories"
    for kind, fields in (("images", ("id", "file_name", "height", "width")), ("categories", ("id",)),
                         ("annotations", ("image_id", "category_id", "bbox"))):
        for entry in data[kind]:
            absent = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if absent:
                return f"has {kind} without {', '.join(absent)}: {str(entry)[:80]}"
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        if a["image_id"] not in image_ids:
            return f"has annotation {a.get('id')} of unknown image {a['image_id']}"
        if a["category_id"] not in category_ids:
            return f"has annotation {a.get('id')} of unknown category {a['category_id']}"
        bbox = a["bbox"]
        where = f"annotation {a.get('id')} (image {a['image_id']})"
        if not isinstance(bbox, list) or len(bbox) != 4:
            return f"has {where} whose bbox {str(bbox)[:60]} is not [x, y, width, height]"
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in bbox):
            return f"has {where} whose bbox {bbox} is not four finite numbers [x, y, width, height]"
        if bbox[2] < 0 or bbox[3] < 0:
            return f"has {where} whose bbox {bbox} has a negative width or height"
    return None


@dataclass(frozen=True)
class SyntheticSettings:
    """How the synthetic images are drawn."""

    num_classes: int = 3
    min_size: int = 64
    max_size: int = 128
    max_objects: int = 4
    min_object: int = 12
    max_object: int = 32
    clutter: int = 6


@dataclass
class _Layout:
    """Where one synthetic image's objects go (class, box), and the generator positioned to draw the rest."""

    rng: np.random.Generator
    height: int
    width: int
    objects: list[tuple[int, Box]]


class SyntheticCocoShapes(DetectionDataset):
    """Deterministic images of several shapes (the classes: :data:`SHAPES`) with boxes and instance masks.

    Image sides are drawn from ``[min_size, max_size]``, 1 to ``max_objects`` objects per image
    from ``[min_object, max_object]`` pixels, each of a random colour, none overlapping.
    The whole data set's COCO dict (masks as RLE) is built on creation; images are drawn
    again when read.
    """

    def __init__(self, size: int = 512, settings: SyntheticSettings = SyntheticSettings(), seed: int = 0,
                 split: str = "train", train: bool | None = None, masks: bool = True) -> None:
        s = settings
        if not 1 <= s.num_classes <= len(SHAPES):
            raise UsageError(f"synthetic classes must be between 1 and {len(SHAPES)}, got {s.num_classes}")
        if not 8 <= s.min_object <= s.max_object < s.min_size <= s.max_size:
            raise UsageError("synthetic sizes must satisfy 8 <= min_object <= max_object < min_size <= max_size, got "
                             f"objects {s.min_object}-{s.max_object}, images {s.min_size}-{s.max_size}")
        if s.max_objects < 1 or size < 1:
            raise UsageError(f"synthetic data needs at least one image and one object, got {size} and {s.max_objects}")
        if split not in ("train", "val"):
            raise UsageError(f"split must be 'train' or 'val', got {split!r}")
        self.settings = s
        self.seed = seed
        self.split = split
        self.train = split == "train" if train is None else train
        self.masks = masks
        self.dataset = self._coco_dict(size)
        self._index()

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index, 2])

    def _layout(self, index: int) -> _Layout:
        s, rng = self.settings, self._rng(index)
        height, width = (int(v) for v in rng.integers(s.min_size, s.max_size + 1, 2))
        objects: list[tuple[int, Box]] = []
        for _ in range(int(rng.integers(1, s.max_objects + 1))):
            for _attempt in range(20):
                side = int(rng.integers(s.min_object, s.max_object + 1))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                box = Box(top, left, top + side, left + side)
                if all(box.bottom + 2 <= b.top or b.bottom + 2 <= box.top or box.right + 2 <= b.left
                       or b.right + 2 <= box.left for _, b in objects):
                    objects.append((int(rng.integers(s.num_classes)), box))
                    break
        return _Layout(rng, height, width, objects)

    def _masks(self, layout: _Layout) -> list[np.ndarray]:
        ys, xs = np.mgrid[0:layout.height, 0:layout.width].astype(np.float32)
        return [shape_mask(SHAPES[cls], box, ys, xs) for cls, box in layout.objects]

    def render(self, index: int) -> np.ndarray:
        """Image ``index`` as ``H×W×3`` uint8."""
        layout = self._layout(index)
        image = cluttered_background(layout.rng, layout.height, layout.width, self.settings.clutter)
        for mask in self._masks(layout):
            colour = 0.55 + 0.45 * layout.rng.random(3)
            image = image * (1 - mask[..., None]) + colour * mask[..., None]
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)

    def load_image(self, index: int) -> np.ndarray:
        return self.render(index)

    def _coco_dict(self, size: int) -> dict:
        images, annotations = [], []
        for index in range(size):
            layout = self._layout(index)
            images.append({"id": index + 1, "file_name": f"{index:06d}.png", "height": layout.height,
                           "width": layout.width})
            for (cls, _), mask in zip(layout.objects, self._masks(layout)):
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": cls + 1,
                    "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                    "area": int(mask.sum()), "segmentation": encode_mask(mask), "iscrowd": 0,
                })
        categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(self.settings.num_classes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def export(self, folder: PathLike) -> Path:
        """Write the data set as a COCO folder: ``annotations.json`` and ``images/*.png``.

        Returns the annotation file's path.
        """
        folder = Path(folder)
        for index, info in enumerate(self.images):
            with atomic_open(folder / "images" / info["file_name"], "wb") as handle:
                Image.fromarray(self.load_image(index)).save(handle, format="PNG")
        path = folder / "annotations.json"
        write_text(path, json.dumps(self.dataset))
        return path
