"""Detection training: torchvision's detector losses + λ · the LAUD backbone's sparsity loss.

The epoch loop, checkpoints, exact resumption, records and ``summary.json`` are the shared
:class:`~laudnet.training.loop.EpochTrainer`'s; this module builds the detector and the COCO
data, trains one epoch and evaluates COCO mAP. ``best.pth`` is the epoch with the best
bbox mAP.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..io import PathLike, load_checkpoint
from ..models.weights import extract_state_dict, load_state_dict
from ..reporting import format_table
from ..models.official import is_official_checkpoint
from ..training.distributed import DistEnv, all_reduce_sum, init_distributed, resolve_device, shutdown
from ..training.tables import STAGE_HEADERS, stage_rows, stage_summary
from ..training.optim import ParamGroup
from ..training.loop import EpochTrainer, ShardSampler, build_loaders, make_loader
from .config import DetectionConfig
from .data import CocoDetection, DetectionDataset, SyntheticCocoShapes, collate
from .evaluation import DetectionEvalResult, evaluate_detector
from .models import DETECTORS, build_detector, laud_backbone
from .sparse import convert_detector
from ..errors import CheckpointError, UsageError

log = logging.getLogger(__name__)


@dataclass
class DetectionData:
    """The training and validation sets of a run."""

    train: DetectionDataset
    val: DetectionDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def detection_split(config: DetectionConfig, split: str) -> DetectionDataset:
    """The ``train`` or ``val`` set: built-in synthetic shapes (``data: synthetic``) or a COCO-format folder."""
    if config.data == "synthetic":
        size = config.synthetic_train_size if split == "train" else config.synthetic_val_size
        return SyntheticCocoShapes(size, config.synthetic_settings(), config.seed, split, masks=config.masks)
    return CocoDetection(*config.coco_paths(split), train=split == "train", masks=config.masks)


def build_detection_data(config: DetectionConfig) -> DetectionData:
    """Both sets of a run; their categories must agree."""
    data = DetectionData(detection_split(config, "train"), detection_split(config, "val"))
    if data.train.category_ids != data.val.category_ids:
        raise UsageError(f"{config.data}: the training and validation annotations have different categories")
    return data


def detector_from_config(config: DetectionConfig, num_classes: int) -> nn.Module:
    """The configured detector, its backbone with the configured weights."""
    return build_detector(
        config.detector, config.model, mode=config.mode, spatial_granularity=config.spatial_granularity,
        channel_granularity=config.channel_granularity, weights_backbone=config.weights, num_classes=num_classes,
        trainable_layers=config.trainable_layers, frozen_bn=config.frozen_bn, anchor_size=config.anchor_size,
        min_size=config.min_size, max_size=config.max_size, model_kwargs=config.model_kwargs, **config.detector_kwargs)


def detector_from_checkpoint(checkpoint: PathLike | dict, map_location: str | torch.device = "cpu",
                             source: str | None = None) -> nn.Module:
    """Rebuild the detector a ``laudnet detect train`` checkpoint (a path, or the loaded dict from
    ``source``) describes, with its weights."""
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, map_location)
    source = source or "the checkpoint"
    if is_official_checkpoint(checkpoint):
        raise CheckpointError(f"{source} is an official LAUDNet classification checkpoint, not a laudnet detection "
                              f"checkpoint: `laudnet eval --checkpoint {source} --data DIR` evaluates it")
    config = checkpoint.get("model_config")
    if not isinstance(config, dict) or config.get("name") not in DETECTORS:
        name = config.get("name") if isinstance(config, dict) else None
        raise CheckpointError(f"{source} is not a laudnet detection checkpoint"
                              + (f" (it holds a {name} model: `laudnet eval --checkpoint {source}` evaluates it)"
                                 if name else ""))
    model = build_detector(config["name"], **config.get("kwargs", {}))
    load_state_dict(model, extract_state_dict(checkpoint), source)
    return model


def evaluate_checkpoint(
    path: PathLike, *, data: str | None = None, annotations: str | None = None, images: str | None = None,
    batch_size: int | None = None, device: str = "auto", workers: int = 2, progress: bool = False,
    engine: bool = True,
) -> DetectionEvalResult:
    """COCO metrics of a detection checkpoint on its run's validation data (or ``data`` with
    ``annotations`` and ``images``), on one or many processes.

    ``engine``: the backbone runs on the sparse engine (torch backend: any image size, the same
    detections as the masked model); ``False`` runs the masked model, for comparison.
    """
    resolve_device(device)  # a bad device is an error before anything is loaded
    checkpoint = load_checkpoint(path)
    model = detector_from_checkpoint(checkpoint, source=str(path))
    config = DetectionConfig.from_checkpoint(checkpoint, data=data, batch_size=batch_size,
                                             val_annotations=annotations, val_images=images)
    val = detection_split(config, "val")
    trained = int(model.build_config["kwargs"]["num_classes"]) - 1
    if trained != len(val.category_ids):
        names = checkpoint.get("classes") or []
        shown = f" ({', '.join(map(str, names))})" if names else ""
        raise CheckpointError(f"{path} was trained on {trained} categories{shown}; the validation data "
                              f"({config.data}) has {len(val.category_ids)} ({', '.join(val.classes)}): evaluate on "
                              "annotations with the same categories")
    env = init_distributed(device)
    try:
        loader = make_loader(val, max(config.batch_size // env.world_size, 1), ShardSampler(len(val), env), workers,
                             env.device, drop_last=False, collate_fn=collate)
        model = model.to(env.device)
        if engine:
            try:
                model = convert_detector(model, backend="torch")
            except UsageError as error:
                raise UsageError(f"{error}; evaluate {path} with engine=False (`detect eval --masked`)") from None
        result = evaluate_detector(model, loader, val.coco(), val.category_ids, env, progress=progress)
    finally:
        shutdown(env)
    return dataclasses.replace(result, target=config.target)


def param_groups(config: DetectionConfig, model: nn.Module) -> list[ParamGroup]:
    """The backbone at ``lr × backbone_lr_mult`` (weight decay × ``backbone_weight_decay_mult``),
    the maskers and the FPN and heads at ``lr``."""
    body = laud_backbone(model).body
    backbone = set(map(id, body.backbone_parameters()))
    maskers = set(map(id, body.masker_parameters()))
    rest = [p for p in model.parameters() if id(p) not in backbone and id(p) not in maskers]
    return [ParamGroup("backbone", body.backbone_parameters(), config.backbone_lr_mult, config.backbone_weight_decay_mult),
            ParamGroup("maskers", body.masker_parameters()),
            ParamGroup("heads", rest)]


def stage_table(result: DetectionEvalResult) -> str:
    """The per-stage densities and MACs ratios of an evaluation, as a text table."""
    return format_table(STAGE_HEADERS, stage_rows(result.blocks))


class DetectionTrainer(EpochTrainer[DetectionEvalResult]):
    """Trains a LAUD detector to a backbone MACs target (see the module docstring)."""

    def __init__(self, config: DetectionConfig, env: DistEnv, resume: bool = False, progress: bool = True) -> None:
        self.check_output(config, resume)
        torch.manual_seed(config.seed)
        self.data = build_detection_data(config)
        model = detector_from_config(config, self.data.num_classes).to(env.device)
        self.loaders = build_loaders(config, env, self.data.train, self.data.val, collate_fn=collate)
        self.backbone = laud_backbone(model)
        super().__init__(config, env, model, self.backbone.body, param_groups(config, model), len(self.loaders.train),
                         model.build_config, resume, progress)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        c, env = self.config, self.env
        self.ddp.train()
        self.loaders.sampler.set_epoch(epoch)
        steps = len(self.loaders.train)
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(self.loaders.train, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False,
                   disable=not (self.progress and env.is_main))
        for i, (images, targets) in enumerate(bar):
            images = [image.to(env.device, non_blocking=True) for image in images]
            targets = [{k: v.to(env.device, non_blocking=True) for k, v in t.items()} for t in targets]
            self.begin_step()
            with self.autocast():
                losses = self.ddp(images, targets)
                detection = sum(losses.values())
                stats = self.backbone.last_stats
                sparsity = self.sparsity(stats, epoch, i)
                loss = detection + c.lambda_sparsity * sparsity
            self.optimise(loss, epoch, i)
            values = {"loss": loss.item(), "detection": detection.item(), "sparsity": sparsity.item(),
                      "macs_ratio": stats.macs_ratio.detach().mean().item(),
                      **{k: v.item() for k, v in sorted(losses.items())}}
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if i % c.log_every == 0 or i == steps - 1:
                bar.set_postfix(loss=f"{sums['loss'] / count:.3f}", macs=f"{sums['macs_ratio'] / count:.3f}")
        totals = all_reduce_sum(torch.tensor([*sums.values(), count], dtype=torch.float64), env).tolist()
        means = {f"train_{k}": v / totals[-1] for k, v in zip(sums, totals)}
        return {**means, **self.epoch_metrics(), "target": self.target(epoch)}

    def checkpoint(self) -> dict[str, Any]:
        """The shared checkpoint, plus the class names that ``detect predict`` prints."""
        return {**super().checkpoint(), "classes": self.data.train.classes}

    def evaluate(self) -> DetectionEvalResult:
        val = self.data.val
        return evaluate_detector(self.ddp, self.loaders.val, val.coco(), val.category_ids, self.env, self.config.amp,
                                 self.progress)

    def score(self, result: DetectionEvalResult) -> float:
        return result.bbox.ap

    def val_record(self, result: DetectionEvalResult) -> dict[str, float]:
        record = {"val_bbox_map": result.bbox.ap, "val_bbox_map50": result.bbox.ap50}
        if result.segm is not None:
            record["val_segm_map"] = result.segm.ap
        return {**record, "val_macs_ratio": result.macs_ratio}

    def report(self, record: dict, result: DetectionEvalResult) -> None:
        segm = f" segm mAP {result.segm.ap:.3f}" if result.segm is not None else ""
        log.info("epoch %d/%d  train loss %.4f  val bbox mAP %.3f%s  MACs ratio %.3f (target %.2f)  T %.3f",
                 record["epoch"], self.config.epochs, record["train_loss"], result.bbox.ap, segm, result.macs_ratio,
                 record["target"], record["temperature"])
        log.info("%s", stage_table(result))

    def summary(self, result: DetectionEvalResult) -> dict[str, Any]:
        return {
            "detector": self.config.detector,
            "model": self.config.model,
            "spec": self.backbone.body.dynamic_spec.to_dict(),
            "target": self.config.target,
            "bbox": asdict(result.bbox),
            "segm": asdict(result.segm) if result.segm is not None else None,
            "macs_ratio": result.macs_ratio,
            "best_bbox_map": self.state.best,
            "epochs": self.config.epochs,
            "images": result.images,
            "stages": stage_summary(result.blocks),
            "blocks": result.blocks,
        }


def train_detector(config: DetectionConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run a whole detection training; returns the summary (also in ``OUTPUT/summary.json``)."""
    env = init_distributed(config.device)
    try:
        return DetectionTrainer(config, env, resume=resume, progress=progress).fit()
    finally:
        shutdown(env)
