"""COCO evaluation of a LAUD detector: bbox (and segm) mAP with pycocotools, plus what the backbone computed.

Detections are turned into COCO results (category ids, ``[x, y, w, h]`` boxes, RLE masks
thresholded at 0.5), gathered from every process and scored against the data set's
ground truth by ``COCOeval`` over the evaluated images. The backbone's MACs ratio and
per-block densities are averaged per image as in classification.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from ..dynamic.stats import DensityMeter
from ..training.distributed import DistEnv, all_reduce_sum
from ..training.loop import autocast
from .data import encode_mask
from .models import laud_backbone
from ..errors import UsageError

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")


@dataclass
class CocoMetrics:
    """The twelve numbers of ``COCOeval.summarize()`` (``-1`` where no ground truth qualifies)."""

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float

    @classmethod
    def zero(cls) -> "CocoMetrics":
        return cls(*([0.0] * 12))


def coco_metrics(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Iterable[int] | None = None) -> CocoMetrics:
    """Score COCO ``results`` against ``coco_gt`` (``bbox`` or ``segm``) over ``image_ids`` (default: all).

    No results at all scores zero (pycocotools cannot load an empty result list).
    """
    if iou_type not in IOU_TYPES:
        raise UsageError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    if not results:
        return CocoMetrics.zero()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return CocoMetrics(*(float(v) for v in evaluator.stats))


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int]) -> list[dict]:
    """One image's torchvision detections as COCO results (labels 1…K mapped to ``category_ids``)."""
    boxes = output["boxes"].detach().float().cpu()
    boxes[:, 2:] -= boxes[:, :2]
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    masks = output.get("masks")
    if masks is not None:
        masks = (masks.detach()[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    results = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
        result = {"image_id": int(image_id), "category_id": category_ids[label - 1], "bbox": box, "score": score}
        if masks is not None:
            result["segmentation"] = encode_mask(masks[i])
        results.append(result)
    return results


@dataclass
class DetectionEvalResult:
    """COCO metrics and what the backbone computed on a data set (``target``: the MACs ratio the
    evaluated checkpoint was trained to, where known; ``inference_ms``: the detector's time per
    image, data loading excluded; ``runner``: what ran the backbone, the sparse engine or the
    masked model)."""

    bbox: CocoMetrics
    segm: CocoMetrics | None
    macs_ratio: float
    images: int
    detections: int
    blocks: list[dict] = field(default_factory=list)
    target: float | None = None
    inference_ms: float = float("nan")
    runner: str = "masked model"


def _gather(items: list, env: DistEnv) -> list:
    if not env.distributed:
        return items
    gathered: list[list] = [[] for _ in range(env.world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: Iterable, coco_gt: COCO, category_ids: list[int], env: DistEnv,
                      amp: str = "none", progress: bool = False) -> DetectionEvalResult:
    """bbox (and, for Mask R-CNN, segm) COCO metrics, MACs ratio and per-block densities over ``loader``."""
    model.eval()
    backbone = laud_backbone(model)
    meter = DensityMeter()
    masks = isinstance(getattr(model, "module", model), MaskRCNN)
    results, image_ids = [], []
    seconds = 0.0
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not (progress and env.is_main)):
        images = [image.to(env.device, non_blocking=True) for image in images]
        _synchronize(env.device)
        start = time.perf_counter()
        with autocast(env.device, amp):
            outputs = model(images)
        _synchronize(env.device)
        seconds += time.perf_counter() - start
        meter.update(backbone.last_stats)
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            image_ids.append(image_id)
            results.extend(to_coco_results(output, image_id, category_ids))
    meter.load_totals(all_reduce_sum(meter.totals(), env))
    inference_ms = 1000 * seconds / max(len(image_ids), 1)  # this process's images
    results, image_ids = _gather(results, env), _gather(image_ids, env)
    return DetectionEvalResult(
        bbox=coco_metrics(coco_gt, results, "bbox", image_ids),
        segm=coco_metrics(coco_gt, results, "segm", image_ids) if masks else None,
        macs_ratio=meter.macs_ratio, images=len(image_ids), detections=len(results), blocks=meter.block_summary(),
        inference_ms=inference_ms,
        runner="sparse engine" if backbone.engine is not None else "masked model",
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
