"""Image classification's training configuration (the official ImageNet recipe's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..training.config import RunConfig, check_non_negative_ints, check_positive_ints

# The largest image side a run takes: one 4096×4096 image is 192 MiB as float32 before the network runs.
MAX_IMAGE_SIZE = 4096


@dataclass
class TrainConfig(RunConfig):
    """Image classification: the run settings plus its data, static pre-training and distillation."""

    teacher: str = "initial"
    pretrain_epochs: int = 0
    image_size: int = 224
    synthetic_classes: int = 6
    synthetic_object_size: int = 14
    label_smoothing: float = 0.0
    alpha_distill: float = 0.5
    distill_temperature: float = 4.0
    channels_last: bool = False

    def validate(self) -> "TrainConfig":
        super().validate()
        check_positive_ints(self, "image_size")
        if self.image_size > MAX_IMAGE_SIZE:
            raise UsageError(f"image_size {self.image_size} is too large: at most {MAX_IMAGE_SIZE} pixels per side "
                             f"(one {self.image_size}x{self.image_size} image would take "
                             f"{3 * 4 * self.image_size**2 / 2**30:.1f} GiB as float32)")
        check_non_negative_ints(self, "pretrain_epochs")
        if float(self.distill_temperature) <= 0:
            raise UsageError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if float(self.alpha_distill) < 0:
            raise UsageError(f"alpha_distill must be zero or positive, got {self.alpha_distill}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        return self
