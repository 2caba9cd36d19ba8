"""Object detection and instance segmentation with LAUD backbones: torchvision's RetinaNet,
Faster R-CNN and Mask R-CNN, COCO-format data (and built-in synthetic shapes), COCO evaluation."""

from .config import DetectionConfig
from .data import CocoDetection, SyntheticCocoShapes, SyntheticSettings, collate
from .training import (
    DetectionTrainer, build_detection_data, detector_from_checkpoint, evaluate_checkpoint, train_detector,
)
from .evaluation import CocoMetrics, DetectionEvalResult, coco_metrics, evaluate_detector
from .models import BACKBONES, DETECTORS, LaudFPN, build_detector, laud_backbone
from .predict import Prediction, image_tensor, predict, read_image, save_prediction
from .sparse import convert_detector

__all__ = [
    "BACKBONES", "CocoDetection", "CocoMetrics", "DETECTORS", "DetectionConfig", "DetectionEvalResult",
    "DetectionTrainer", "LaudFPN", "Prediction", "SyntheticCocoShapes", "SyntheticSettings", "build_detection_data",
    "build_detector", "coco_metrics", "collate", "convert_detector", "detector_from_checkpoint", "evaluate_checkpoint", "evaluate_detector",
    "image_tensor", "laud_backbone", "predict", "read_image", "save_prediction", "train_detector",
]
