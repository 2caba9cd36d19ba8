"""Classification accuracy and what a model computed on a data set, reduced over processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..dynamic.stats import DensityMeter
from ..errors import CheckpointError
from ..io import PathLike, load_checkpoint
from ..models import model_from_checkpoint
from ..models.family import family_of
from ..models.official import is_official_checkpoint, official_config
from ..training.distributed import DistEnv, all_reduce_sum, init_distributed, resolve_device, shutdown
from ..training.loop import ShardSampler, autocast, make_loader
from .config import TrainConfig
from .data import build_datasets


@dataclass
class EvalResult:
    """Accuracy and what the model computed on a data set (batch statistics averaged per image)."""

    top1: float
    top5: float
    loss: float
    macs_ratio: float
    count: int
    blocks: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, env: DistEnv, amp: str = "none",
             channels_last: bool = False, progress: bool = False) -> EvalResult:
    """Top-1/top-5 accuracy, loss, MACs ratio and per-block densities, reduced over processes."""
    model.eval()
    meter = DensityMeter()
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss, count
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not (progress and env.is_main)):
        images = images.to(env.device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(env.device, non_blocking=True)
        with autocast(env.device, amp):
            out = model(images, return_stats=True)
        logits = out.logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == targets[:, None]
        sums += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
                              F.cross_entropy(logits, targets, reduction="sum").item(), len(targets)],
                             dtype=torch.float64)
        meter.update(out.stats)
    sums = all_reduce_sum(sums, env)
    meter.load_totals(all_reduce_sum(meter.totals(), env))
    count = max(int(sums[3]), 1)
    return EvalResult(top1=float(sums[0]) / count, top5=float(sums[1]) / count, loss=float(sums[2]) / count,
                      macs_ratio=meter.macs_ratio, count=int(sums[3]), blocks=meter.block_summary())


def evaluate_checkpoint(
    path: PathLike, *, data: str | None = None, batch_size: int | None = None, device: str = "auto", workers: int = 2,
    progress: bool = False,
) -> EvalResult:
    """Evaluate a checkpoint on its training run's validation data (or ``data``), on one or many processes.

    An official LAUDNet checkpoint records no laudnet data settings: it needs ``data`` (and is read
    at its ``IMAGE_SIZE``).
    """
    resolve_device(device)  # a bad device is an error before anything is loaded
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, source=str(path))
    if is_official_checkpoint(checkpoint):
        if data is None:
            raise CheckpointError(f"{path} is an official LAUDNet checkpoint, which records no laudnet data settings: "
                                  "give --data (an ImageNet-layout folder with train/ and val/)")
        config = TrainConfig.from_dict({"data": data, "image_size": official_config(checkpoint).image_size,
                                        **({"batch_size": batch_size} if batch_size is not None else {})})
    else:
        config = TrainConfig.from_checkpoint(checkpoint, data=data, batch_size=batch_size)
    bundle = build_datasets(config)
    classes = family_of(model).head(model).out_features
    if classes != bundle.num_classes:
        raise CheckpointError(f"{path} classifies {classes} classes but the data {config.data} has "
                              f"{bundle.num_classes}: evaluate it on the data it was trained for")
    env = init_distributed(device)
    try:
        val = bundle.val
        loader = make_loader(val, max(config.batch_size // env.world_size, 1), ShardSampler(len(val), env), workers,
                             env.device, drop_last=False)
        return evaluate(model.to(env.device), loader, env, progress=progress)
    finally:
        shutdown(env)
