"""Object detection and instance segmentation with LAUD backbones: torchvision's RetinaNet,
Faster R-CNN and Mask R-CNN."""

from .models import BACKBONES, DETECTORS, LaudFPN, build_detector, laud_backbone

__all__ = ["BACKBONES", "DETECTORS", "LaudFPN", "build_detector", "laud_backbone"]
