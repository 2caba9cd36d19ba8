"""Detection training configuration: the shared run settings plus the detector and its data.

Defaults are the official LAUDNet COCO recipes' (MMDetection 2.21, 1× schedule): SGD lr 0.02
for a global batch of 16, momentum 0.9, weight decay 1e-4, ×0.1 at epochs 8 and 11 of 12,
a short linear warm-up, Gumbel temperature 0.1 → 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.config import RunConfig, check_choice, check_positive_ints
from .data import SyntheticSettings
from .models import BACKBONES, DETECTORS
from ..errors import UsageError


@dataclass
class DetectionConfig(RunConfig):
    """Everything a detection training run needs (every field is a ``laudnet detect train`` option)."""

    # model
    detector: str = "retinanet"
    trainable_layers: int = 3
    frozen_bn: bool = True
    min_size: int = 800
    max_size: int = 1333
    anchor_size: int = 32
    detector_kwargs: dict = field(default_factory=dict)
    # data: `data` is "synthetic" or a COCO root holding the files below (relative to it)
    train_annotations: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_annotations: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    synthetic_train_size: int = 512
    synthetic_val_size: int = 128
    synthetic_classes: int = 3
    synthetic_min_size: int = 64
    synthetic_max_size: int = 128
    synthetic_objects: int = 4
    # optimisation
    epochs: int = 12
    batch_size: int = 16
    lr: float = 0.02
    nesterov: bool = False
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.07
    warmup_start: float = 0.001
    lr_schedule: str = "step"
    lr_milestones: list = field(default_factory=lambda: [8, 11])
    # dynamic training
    lambda_sparsity: float = 1.0
    t0: float = 0.1
    t_last: float = 0.01
    output: str = "runs/detection"

    def validate(self) -> "DetectionConfig":
        super().validate()
        check_choice("detector", self.detector, DETECTORS)
        check_choice("model", self.model, BACKBONES)
        check_positive_ints(self, "min_size", "max_size", "anchor_size", "synthetic_classes", "synthetic_objects")
        if not 0 <= self.trainable_layers <= 5:
            raise UsageError(f"trainable_layers must be between 0 and 5, got {self.trainable_layers}")
        if not isinstance(self.detector_kwargs, dict):
            raise UsageError(f"detector_kwargs must be a mapping, got {self.detector_kwargs!r}")
        return self

    @property
    def masks(self) -> bool:
        """Whether the detector predicts instance masks (its data must provide them)."""
        return self.detector == "mask_rcnn"

    def synthetic_settings(self) -> SyntheticSettings:
        return SyntheticSettings(num_classes=self.synthetic_classes, min_size=self.synthetic_min_size,
                                 max_size=self.synthetic_max_size, max_objects=self.synthetic_objects)

    def coco_paths(self, split: str) -> tuple[Path, Path]:
        """The annotation file and image folder of ``split`` (``train`` / ``val``) under ``data``."""
        root = Path(self.data)
        if split == "train":
            return root / self.train_annotations, root / self.train_images
        return root / self.val_annotations, root / self.val_images
