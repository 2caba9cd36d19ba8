"""Detectors whose LAUD backbone runs on the sparse engine: the same boxes, less backbone work.

:func:`convert_detector` (what ``laudnet.sparse.convert(detector)`` calls) returns the detector
with its backbone's stages on the engine: the feature pyramid, the heads and torchvision's
transform are the detector's own (shared, not copied). torchvision resizes the images and pads a
batch to one size; the engine computes the padded batch like the masked backbone does (the
padding is not skipped), so features and detections equal the masked detector's on any image
sizes and mixed batches. With the torch backend the backbone's statistics (densities, MACs) are
recorded as the masked model records them; ONNX Runtime's graph decides its masks inside and
records none.
"""

from __future__ import annotations

import copy

from torch import nn

from ..errors import UsageError
from ..sparse.executor import SparseModel, register_converter
from ..sparse.kernels import RecordingKernels
from .models import LaudFPN


def is_laud_detector(model: nn.Module) -> bool:
    """A detector built by :func:`laudnet.detection.build_detector` (its backbone a :class:`LaudFPN`)."""
    return isinstance(getattr(model, "backbone", None), LaudFPN)


def convert_detector(detector: nn.Module, backend: str = "auto", threads: int | None = None) -> nn.Module:
    """The detector (in eval mode) with its backbone's stages on the sparse engine.

    ``auto`` and ``torch``: the torch engine (any image size, statistics recorded);
    ``onnxruntime``: a graph per padded batch size (for a fixed input size).
    """
    if backend not in ("auto", "torch", "onnxruntime"):
        raise UsageError(f"a detector's backbone runs on the torch or onnxruntime backend, got {backend!r}")
    detector = detector.eval()
    body = detector.backbone.body
    if backend == "onnxruntime":
        from ..sparse.export import OrtEngine

        engine = OrtEngine(body, threads=threads)
    else:
        engine = SparseModel(body, RecordingKernels())
    return with_backbone_engine(detector, engine)


def with_backbone_engine(detector: nn.Module, engine: nn.Module) -> nn.Module:
    """A view of ``detector`` (eval mode) whose backbone's stages run on ``engine`` (a module with
    ``features(images)`` and ``records_stats``); the detector itself is left as it was."""
    backbone = _shallow(detector.backbone)
    backbone.engine = engine
    converted = _shallow(detector)
    converted.backbone = backbone
    return converted.eval()


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing its submodules (replacing one in the copy leaves the original as it was)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


register_converter(is_laud_detector, convert_detector)
