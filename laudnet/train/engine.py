"""Training and evaluation loops: from a static network to a dynamic one at a MACs target.

One :class:`Trainer` runs on a CPU, a GPU, or many processes under ``torchrun`` (DDP).
Each epoch ends with an evaluation, a per-stage density table in the log, an atomic
``last.pth`` (and ``best.pth``) with everything needed to resume exactly, safetensors
exports of the weights, and a CSV / TensorBoard record. The run ends with
``summary.json``, which the latency predictor reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from ..dynamic.gates import temperature_at
from ..dynamic.stats import DensityMeter
from ..io import load_checkpoint, save_safetensors, save_torch, write_text
from ..models import DynamicBackbone, checkpoint_metadata, create_model, load_state_dict, model_from_checkpoint
from ..models.weights import extract_state_dict
from ..reporting import format_table
from .config import TrainConfig
from .data import build_datasets
from .distributed import DistEnv, all_reduce_sum, init_distributed, shutdown
from .losses import distillation_loss, sparsity_loss

log = logging.getLogger(__name__)

CHECKPOINT_LAST = "last.pth"
CHECKPOINT_BEST = "best.pth"
SUMMARY = "summary.json"


# -- data ------------------------------------------------------------------------------------

class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: evaluation shards without padding duplicates."""

    def __init__(self, size: int, env: DistEnv) -> None:
        self.indices = list(range(env.rank, size, env.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int, device: torch.device,
            drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, persistent_workers=workers > 0)


# -- evaluation -----------------------------------------------------------------------------

@dataclass
class EvalResult:
    """Accuracy and what the model computed on a data set (batch statistics averaged per image)."""

    top1: float
    top5: float
    loss: float
    macs_ratio: float
    count: int
    blocks: list[dict] = field(default_factory=list)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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
        with _autocast(env.device, amp):
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


def stage_rows(blocks: list[dict]) -> list[list]:
    """Per-stage means of block densities and MACs ratios, for the table printed after evaluation."""
    rows = []
    for stage in sorted({b["stage"] for b in blocks}):
        members = [b for b in blocks if b["stage"] == stage]
        mean = lambda key: sum(b[key] for b in members) / len(members)  # noqa: E731
        rows.append([f"stage {stage + 1}", len(members), mean("conv1_density"), mean("conv2_density"),
                     mean("conv3_density"), mean("channel_density"), mean("macs_ratio")])
    return rows


STAGE_HEADERS = ["", "blocks", "conv1", "conv2", "conv3", "channels", "MACs ratio"]


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


def build_optimizer(config: TrainConfig, model: DynamicBackbone) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; the backbone's learning rate is ``lr × backbone_lr_mult``."""
    groups = [
        {"params": list(model.backbone_parameters()), "lr": config.lr * config.backbone_lr_mult, "name": "backbone"},
        {"params": list(model.masker_parameters()), "lr": config.lr, "name": "maskers"},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-iteration cosine decay, after an optional linear warm-up (torch's schedulers)."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    if warmup == 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


# -- the trainer ----------------------------------------------------------------------------

@dataclass
class TrainState:
    """Where a run is: what resuming must restore besides weights and optimiser."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Fine-tunes a LAUD model to a MACs target (see the module docstring)."""

    def __init__(self, config: TrainConfig, env: DistEnv, resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.env = env
        self.progress = progress
        self.output = Path(config.output)
        last = self.output / CHECKPOINT_LAST
        if last.exists() and not resume:
            raise ValueError(f"{self.output} already holds a run ({last}); pass --resume to continue it "
                             "or choose another --output")
        # Build and check everything before anything is written.
        torch.manual_seed(config.seed)
        self.data = build_datasets(config)
        model = build_model(config, self.data.num_classes)
        self.teacher = build_teacher(config, model, self.data.num_classes)
        self.model = model.to(env.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            self.teacher = self.teacher.to(env.device)
        if config.batch_size % env.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {env.world_size} processes")
        per_process = config.batch_size // env.world_size
        self.train_sampler = DistributedSampler(self.data.train, num_replicas=env.world_size, rank=env.rank,
                                                shuffle=True, seed=config.seed, drop_last=True)
        self.train_loader = make_loader(self.data.train, per_process, self.train_sampler, config.workers,
                                    env.device, drop_last=True)
        if len(self.train_loader) == 0:
            raise ValueError(f"the training set ({len(self.data.train)} images) is smaller than one batch "
                             f"({config.batch_size}); lower batch_size")
        self.val_loader = make_loader(self.data.val, per_process, ShardSampler(len(self.data.val), env),
                                  config.workers, env.device, drop_last=False)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer, len(self.train_loader))
        self.scaler = torch.amp.GradScaler(env.device.type) if config.amp == "fp16" else None
        self.state = TrainState()
        if resume and last.exists():
            self._restore(last)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
                    if env.distributed else self.model)
        self._tensorboard = None

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_config": checkpoint_metadata(self.model),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "temperature": self.temperature(self.state.step),
            "best_top1": self.state.best_top1,
            "history": self.state.history,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def _restore(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        try:
            load_state_dict(self.model, extract_state_dict(checkpoint), str(path))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(epoch=int(checkpoint["epoch"]), step=int(checkpoint["step"]),
                                    best_top1=float(checkpoint["best_top1"]), history=list(checkpoint["history"]))
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a resumable laudnet checkpoint (missing {error})") from None
        log.info("resumed %s at epoch %d, step %d", path, self.state.epoch, self.state.step)

    def _save(self, is_best: bool) -> None:
        checkpoint = self._checkpoint()
        save_torch(checkpoint, self.output / CHECKPOINT_LAST)
        metadata = {"model_config": json.dumps(checkpoint["model_config"]), "epoch": str(self.state.epoch)}
        save_safetensors(checkpoint["model"], self.output / "last.safetensors", metadata)
        if is_best:
            save_torch(checkpoint, self.output / CHECKPOINT_BEST)
            save_safetensors(checkpoint["model"], self.output / "best.safetensors", metadata)

    # -- schedules --------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.train_loader)

    def temperature(self, step: int) -> float:
        c = self.config
        return temperature_at(step / self.total_steps, c.t0, c.t_last, c.temperature_schedule)

    def target(self, epoch: int) -> float:
        return 1.0 if epoch < self.config.target_begin_epoch else self.config.target

    # -- loops ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary also written to ``summary.json``."""
        c, env = self.config, self.env
        if env.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            c.save(self.output / "config.yaml")
        result = None
        for epoch in range(self.state.epoch, c.epochs):
            train_metrics = self._train_epoch(epoch)
            result = evaluate(self.ddp, self.val_loader, env, c.amp, c.channels_last, self.progress)
            self.state.epoch = epoch + 1
            is_best = result.top1 > self.state.best_top1
            self.state.best_top1 = max(self.state.best_top1, result.top1)
            record = {"epoch": epoch + 1, **train_metrics, "val_top1": result.top1, "val_top5": result.top5,
                      "val_loss": result.loss, "val_macs_ratio": result.macs_ratio}
            self.state.history.append(record)
            if env.is_main:
                self._report(record, result)
                self._save(is_best)
        if result is None:  # resumed a finished run: evaluate the final weights again
            result = evaluate(self.ddp, self.val_loader, env, c.amp, c.channels_last, self.progress)
        summary = self._summary(result)
        if env.is_main:
            write_text(self.output / SUMMARY, json.dumps(summary, indent=2))
            if self._tensorboard is not None:
                self._tensorboard.close()
        return summary

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        c, env = self.config, self.env
        self.ddp.train()
        self.train_sampler.set_epoch(epoch)
        steps = len(self.train_loader)
        target = self.target(epoch)
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        sums = {"loss": 0.0, "ce": 0.0, "sparsity": 0.0, "correct": 0.0, "ratio": 0.0, "count": 0.0}
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False,
                   disable=not (self.progress and env.is_main))
        for i, (images, targets) in enumerate(bar):
            images = images.to(env.device, non_blocking=True, memory_format=memory_format)
            targets = targets.to(env.device, non_blocking=True)
            self.model.set_temperature(self.temperature(self.state.step))
            progress = (epoch + i / steps) / c.epochs
            with _autocast(env.device, c.amp):
                out = self.ddp(images, return_stats=True)
                logits = out.logits.float()
                ce = F.cross_entropy(logits, targets, label_smoothing=c.label_smoothing)
                sparsity = sparsity_loss(out.stats, target, progress, c.bounds_relax_until).total
                loss = ce + c.lambda_sparsity * sparsity
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(images)
                    loss = loss + c.alpha_distill * distillation_loss(logits, teacher_logits, c.distill_temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {i}; "
                                         "lower the learning rate or disable fp16")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            self.state.step += 1
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
                "train_macs_ratio": reduced["ratio"] / count, "lr": self.optimizer.param_groups[0]["lr"],
                "temperature": self.temperature(self.state.step), "target": target}

    # -- reporting ----------------------------------------------------------------------------
    def _report(self, record: dict, result: EvalResult) -> None:
        c = self.config
        log.info("epoch %d/%d  train loss %.4f acc %.3f  val top1 %.3f top5 %.3f  MACs ratio %.3f (target %.2f)  "
                 "T %.3f", record["epoch"], c.epochs, record["train_loss"], record["train_acc"], result.top1,
                 result.top5, result.macs_ratio, record["target"], record["temperature"])
        log.info("%s", format_table(STAGE_HEADERS, stage_rows(result.blocks)))
        self._write_csv()
        writer = self._writer()
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        keys = list(self.state.history[0])
        out = csv.DictWriter(buffer, fieldnames=keys)
        out.writeheader()
        out.writerows(self.state.history)
        write_text(self.output / "metrics.csv", buffer.getvalue())

    def _writer(self):
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                return None
            self._tensorboard = SummaryWriter(str(self.output / "tensorboard"))
        return self._tensorboard

    def _summary(self, result: EvalResult) -> dict[str, Any]:
        spec = self.model.dynamic_spec
        return {
            "model": self.config.model,
            "spec": spec.to_dict(),
            "input_size": list(self.data.input_size),
            "target": self.config.target,
            "top1": result.top1,
            "top5": result.top5,
            "macs_ratio": result.macs_ratio,
            "best_top1": self.state.best_top1,
            "epochs": self.config.epochs,
            "images": result.count,
            "stages": [dict(zip(["stage", "blocks", "conv1_density", "conv2_density", "conv3_density",
                                 "channel_density", "macs_ratio"], [i, *row[1:]]))
                       for i, row in enumerate(stage_rows(result.blocks))],
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
