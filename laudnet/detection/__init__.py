"""Object detection and instance segmentation with LAUD backbones: torchvision's RetinaNet,
Faster R-CNN and Mask R-CNN, COCO-format data (and built-in synthetic shapes), COCO evaluation."""

from .data import CocoDetection, SyntheticCocoShapes, SyntheticSettings, collate
from .evaluation import CocoMetrics, DetectionEvalResult, coco_metrics, evaluate_detector
from .models import BACKBONES, DETECTORS, LaudFPN, build_detector, laud_backbone

__all__ = [
    "BACKBONES", "CocoDetection", "CocoMetrics", "DETECTORS", "DetectionEvalResult", "LaudFPN",
    "SyntheticCocoShapes", "SyntheticSettings", "build_detector", "coco_metrics", "collate", "evaluate_detector",
    "laud_backbone",
]
