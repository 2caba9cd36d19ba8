"""Optimiser and learning-rate schedule shared by every laudnet training run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .config import RunConfig
from ..errors import UsageError


@dataclass
class ParamGroup:
    """Parameters that share a learning-rate and weight-decay multiplier (e.g. the backbone's)."""

    name: str
    params: Iterable[nn.Parameter]
    lr_mult: float = 1.0
    weight_decay_mult: float = 1.0


def build_optimizer(config: RunConfig, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the trainable parameters of ``groups``, each at its multiples
    of ``lr`` and ``weight_decay``; empty groups are left out."""
    param_groups = []
    for group in groups:
        params = [p for p in group.params if p.requires_grad]
        if params:
            param_groups.append({"params": params, "name": group.name, "lr": config.lr * group.lr_mult,
                                 "weight_decay": config.weight_decay * group.weight_decay_mult})
    if not param_groups:
        raise UsageError("the model has no trainable parameters")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule after an optional linear warm-up from ``warmup_start × lr``:
    cosine decay, or ``step`` (×0.1 at each epoch of ``lr_milestones``, the detection 1× schedule)."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    if config.lr_schedule == "step":
        milestones = [m * steps_per_epoch - warmup for m in config.lr_milestones]
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    else:
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    if warmup == 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=config.warmup_start, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
