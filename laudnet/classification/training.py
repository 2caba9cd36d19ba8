"""Image classification: from a static network to a dynamic one at a MACs target.

One :class:`Trainer` runs on a CPU, a GPU, or many processes under ``torchrun`` (DDP); the
epoch loop, checkpoints, resumption and records are
:class:`~laudnet.training.loop.EpochTrainer`'s.
Each epoch ends with an evaluation, a per-stage density table in the log, an atomic
``last.pth`` (and ``best.pth``), safetensors exports of the weights, and a CSV /
TensorBoard record. The run ends with ``summary.json``, which the latency predictor reads.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models import DynamicBackbone, checkpoint_metadata, create_model, load_state_dict, model_from_checkpoint
from ..reporting import format_table
from ..training.distributed import DistEnv, all_reduce_sum, init_distributed, shutdown
from ..training.loop import CHECKPOINT_LAST, SUMMARY, EpochTrainer, build_loaders
from ..training.losses import distillation_loss
from ..training.optim import ParamGroup
from ..training.tables import STAGE_HEADERS, stage_rows, stage_summary
from .config import TrainConfig
from .data import build_datasets
from .evaluation import EvalResult, evaluate

log = logging.getLogger(__name__)


# -- model, teacher, optimisation ----------------------------------------------------------

def build_model(config: TrainConfig, num_classes: int) -> DynamicBackbone:
    """The student: the configured LAUD model with its initial weights."""
    return create_model(
        config.model, mode=config.mode, spatial_granularity=config.spatial_granularity,
        channel_granularity=config.channel_granularity, weights=config.weights, num_classes=num_classes,
        **config.model_kwargs,
    )


def build_teacher(config: TrainConfig, student: DynamicBackbone, num_classes: int) -> nn.Module | None:
    """A frozen static model: the student's initial weights (``initial``), a checkpoint, or none."""
    if config.teacher == "none" or config.alpha_distill == 0:
        return None
    if config.teacher == "initial":
        teacher = create_model(config.model, mode="static", num_classes=num_classes, **config.model_kwargs)
        backbone = {k: v for k, v in student.state_dict().items() if ".masker_" not in k}
        load_state_dict(teacher, backbone, "the student's initial weights")
    else:
        teacher = model_from_checkpoint(config.teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def param_groups(config: TrainConfig, model: DynamicBackbone) -> list[ParamGroup]:
    """The backbone (classifier included) at ``lr × backbone_lr_mult``, the maskers at ``lr``."""
    return [ParamGroup("backbone", model.backbone_parameters(), config.backbone_lr_mult, config.backbone_weight_decay_mult),
            ParamGroup("maskers", model.masker_parameters())]


# -- the trainer ----------------------------------------------------------------------------

class Trainer(EpochTrainer[EvalResult]):
    """Fine-tunes a LAUD classifier to a MACs target (see the module docstring)."""

    def __init__(self, config: TrainConfig, env: DistEnv, resume: bool = False, progress: bool = True) -> None:
        # Build and check everything before anything is written.
        self.check_output(config, resume)
        torch.manual_seed(config.seed)
        self.data = build_datasets(config)
        model = build_model(config, self.data.num_classes)
        self.teacher = build_teacher(config, model, self.data.num_classes)
        model = model.to(env.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            self.teacher = self.teacher.to(env.device)
        self.loaders = build_loaders(config, env, self.data.train, self.data.val)
        super().__init__(config, env, model, model, param_groups(config, model), len(self.loaders.train),
                         checkpoint_metadata(model), resume, progress)

    def evaluate(self) -> EvalResult:
        c = self.config
        return evaluate(self.ddp, self.loaders.val, self.env, c.amp, c.channels_last, self.progress)

    def score(self, result: EvalResult) -> float:
        return result.top1

    def val_record(self, result: EvalResult) -> dict[str, float]:
        return {"val_top1": result.top1, "val_top5": result.top5, "val_loss": result.loss,
                "val_macs_ratio": result.macs_ratio}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        c, env = self.config, self.env
        self.ddp.train()
        self.loaders.sampler.set_epoch(epoch)
        steps = len(self.loaders.train)
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        sums = {"loss": 0.0, "ce": 0.0, "sparsity": 0.0, "correct": 0.0, "ratio": 0.0, "count": 0.0}
        bar = tqdm(self.loaders.train, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False,
                   disable=not (self.progress and env.is_main))
        for i, (images, targets) in enumerate(bar):
            images = images.to(env.device, non_blocking=True, memory_format=memory_format)
            targets = targets.to(env.device, non_blocking=True)
            self.begin_step()
            with self.autocast():
                out = self.ddp(images, return_stats=True)
                logits = out.logits.float()
                ce = F.cross_entropy(logits, targets, label_smoothing=c.label_smoothing)
                sparsity = self.sparsity(out.stats, epoch, i)
                loss = ce + c.lambda_sparsity * sparsity
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(images)
                    loss = loss + c.alpha_distill * distillation_loss(logits, teacher_logits, c.distill_temperature)
            self.optimise(loss, epoch, i)
            n = len(targets)
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            sums["sparsity"] += sparsity.item() * n
            sums["correct"] += (logits.argmax(dim=1) == targets).sum().item()
            sums["ratio"] += out.stats.macs_ratio.detach().sum().item()
            sums["count"] += n
            if i % c.log_every == 0 or i == steps - 1:
                bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.3f}",
                                acc=f"{sums['correct'] / sums['count']:.3f}",
                                macs=f"{sums['ratio'] / sums['count']:.3f}")
        totals = all_reduce_sum(torch.tensor([sums[k] for k in sums], dtype=torch.float64), env).tolist()
        reduced = dict(zip(sums, totals))
        count = max(reduced["count"], 1.0)
        return {"train_loss": reduced["loss"] / count, "train_ce": reduced["ce"] / count,
                "train_sparsity": reduced["sparsity"] / count, "train_acc": reduced["correct"] / count,
                "train_macs_ratio": reduced["ratio"] / count, **self.epoch_metrics(), "target": self.target(epoch)}

    def report(self, record: dict, result: EvalResult) -> None:
        log.info("epoch %d/%d  train loss %.4f acc %.3f  val top1 %.3f top5 %.3f  MACs ratio %.3f (target %.2f)  "
                 "T %.3f", record["epoch"], self.config.epochs, record["train_loss"], record["train_acc"], result.top1,
                 result.top5, result.macs_ratio, record["target"], record["temperature"])
        log.info("%s", format_table(STAGE_HEADERS, stage_rows(result.blocks)))

    def summary(self, result: EvalResult) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "spec": self.model.dynamic_spec.to_dict(),
            "input_size": list(self.data.input_size),
            "target": self.config.target,
            "top1": result.top1,
            "top5": result.top5,
            "macs_ratio": result.macs_ratio,
            "best_top1": self.state.best,
            "epochs": self.config.epochs,
            "images": result.count,
            "stages": stage_summary(result.blocks),
            "blocks": result.blocks,
        }


def pretrain_config(config: TrainConfig) -> TrainConfig:
    """The static pre-training run a config asks for with ``pretrain_epochs``: all gates on,
    cross-entropy only, written to ``OUTPUT/pretrain``."""
    return dataclasses.replace(config, mode="static", epochs=config.pretrain_epochs, pretrain_epochs=0, target=1.0,
                        lambda_sparsity=0.0, alpha_distill=0.0, teacher="none", weights=config.weights,
                        output=str(Path(config.output) / "pretrain"))


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run a whole training (static pre-training first if configured); returns the summary."""
    env = init_distributed(config.device)
    try:
        if config.pretrain_epochs > 0:
            pre = pretrain_config(config)
            if not (Path(pre.output) / SUMMARY).exists():
                log.info("static pre-training for %d epochs in %s", pre.epochs, pre.output)
                Trainer(pre, env, resume=resume, progress=progress).fit()
            config = dataclasses.replace(config, weights=str(Path(pre.output) / CHECKPOINT_LAST))
        return Trainer(config, env, resume=resume, progress=progress).fit()
    finally:
        shutdown(env)
