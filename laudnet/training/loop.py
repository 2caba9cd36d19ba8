"""The epoch loop every laudnet training run shares, whatever the task.

:class:`EpochTrainer` owns what does not depend on the task: the optimiser and learning-rate
schedule, the Gumbel temperature and MACs-target schedules, the sparsity term, mixed
precision, DDP, the per-epoch evaluation / record / checkpoint cycle, exact resumption
(weights, optimiser, schedule, scaler, counters and random state) and ``summary.json``.
A task (classification in :mod:`.engine`, detection in :mod:`laudnet.detection.engine`)
builds its model and data and implements one training epoch and one evaluation.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..dynamic.gates import temperature_at
from ..dynamic.stats import ModelStats
from ..io import load_checkpoint, remove_stale_temporaries, save_safetensors, save_torch, write_text
from ..models import DynamicBackbone
from ..models.checkpoint import config_difference, describe_config
from ..models.official import is_official_checkpoint
from ..models.weights import extract_state_dict, load_state_dict
from .config import RunConfig
from .distributed import DistEnv
from .losses import sparsity_loss
from .optim import ParamGroup, build_optimizer, build_scheduler
from .records import MetricsLog
from ..errors import CheckpointError, UsageError

log = logging.getLogger(__name__)

CHECKPOINT_LAST = "last.pth"
CHECKPOINT_BEST = "best.pth"
SUMMARY = "summary.json"

R = TypeVar("R")


# -- data loading ----------------------------------------------------------------------------

class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: evaluation shards without padding duplicates."""

    def __init__(self, size: int, env: DistEnv) -> None:
        self.indices = list(range(env.rank, size, env.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Loader(DataLoader):
    """A DataLoader whose workers' :class:`UsageError` s (an unreadable image, say) arrive as the
    worker raised them: one line, not torch's re-raise with the worker's traceback in the message."""

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except UsageError as error:
                text = str(error)
                if "Original Traceback" not in text:
                    raise
                last = text.strip().splitlines()[-1]
                raise type(error)(re.sub(r"^[\w.]+: ", "", last, count=1)) from None
            yield batch


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int, device: torch.device,
                drop_last: bool, collate_fn=None) -> DataLoader:
    return _Loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                   pin_memory=device.type == "cuda", drop_last=drop_last, persistent_workers=workers > 0,
                   collate_fn=collate_fn)


@dataclass
class Loaders:
    """A run's data: shuffled training shards (``sampler.set_epoch`` each epoch), evaluation shards."""

    sampler: DistributedSampler
    train: DataLoader
    val: DataLoader


def build_loaders(config: RunConfig, env: DistEnv, train: Dataset, val: Dataset, collate_fn=None) -> Loaders:
    """Each process's share of ``config.batch_size``: the training set split across processes with
    whole batches only, the validation set in disjoint shards (metrics are reduced over them)."""
    if config.batch_size % env.world_size:
        raise UsageError(f"batch_size {config.batch_size} must be divisible by the {env.world_size} processes")
    per_process = config.batch_size // env.world_size
    sampler = DistributedSampler(train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    train_loader = make_loader(train, per_process, sampler, config.workers, env.device, drop_last=True,
                               collate_fn=collate_fn)
    if len(train_loader) == 0:
        raise UsageError(f"the training set ({len(train)} images) is smaller than one batch "
                         f"({config.batch_size}); lower batch_size")
    val_loader = make_loader(val, per_process, ShardSampler(len(val), env), config.workers, env.device,
                             drop_last=False, collate_fn=collate_fn)
    return Loaders(sampler, train_loader, val_loader)


def autocast(device: torch.device, amp: str):
    """The autocast context of an ``amp`` setting (``none``, ``bf16``, ``fp16``)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# -- the loop ----------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Where a run is: what resuming must restore besides weights and optimiser.

    ``best`` is the best validation score so far (top-1, bbox mAP, ... as the task says).
    """

    epoch: int = 0
    step: int = 0
    best: float = -1.0
    history: list[dict] = field(default_factory=list)


class EpochTrainer(Generic[R]):
    """Base class of the task trainers (see the module docstring).

    Subclasses call :meth:`__init__` once the model and the training loader exist, and implement
    :meth:`train_epoch`, :meth:`evaluate`, :meth:`score`, :meth:`val_record`, :meth:`report`
    and :meth:`summary`. ``R`` is the task's evaluation result.
    """

    def __init__(self, config: RunConfig, env: DistEnv, model: nn.Module, dynamic: DynamicBackbone,
                 param_groups: list[ParamGroup], steps_per_epoch: int, model_config: dict,
                 resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.env = env
        self.progress = progress
        self.model = model
        self.dynamic = dynamic
        self.model_config = model_config
        self.steps_per_epoch = steps_per_epoch
        self.output = Path(config.output)
        self.optimizer = build_optimizer(config, param_groups)
        self.scheduler = build_scheduler(config, self.optimizer, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(env.device.type) if config.amp == "fp16" else None
        self.state = TrainState()
        last = self.output / CHECKPOINT_LAST
        if resume and env.is_main:
            for stale in remove_stale_temporaries(self.output):
                log.info("removed %s, left by an interrupted write", stale)
        if resume and last.exists():
            self._restore(last)
        self.ddp = (DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
                    if env.distributed else model)
        self.records = MetricsLog(self.output)

    @staticmethod
    def check_output(config: RunConfig, resume: bool) -> None:
        """Refuse to overwrite a run unless resuming (call it before building anything)."""
        last = Path(config.output) / CHECKPOINT_LAST
        if last.exists() and not resume:
            raise UsageError(f"{config.output} already holds a run ({last}); pass --resume to continue it "
                             "or choose another --output")

    # -- what tasks provide -------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (calling :meth:`begin_step` / :meth:`optimise` per batch); return its metrics."""
        raise NotImplementedError

    def evaluate(self) -> R:
        raise NotImplementedError

    def score(self, result: R) -> float:
        """The validation number that picks ``best.pth`` (higher is better)."""
        raise NotImplementedError

    def val_record(self, result: R) -> dict[str, float]:
        """The validation scalars of the epoch's record (CSV / TensorBoard / history)."""
        raise NotImplementedError

    def report(self, record: dict, result: R) -> None:
        """Log the epoch's results."""
        raise NotImplementedError

    def summary(self, result: R) -> dict[str, Any]:
        """What ``summary.json`` holds after the run."""
        raise NotImplementedError

    # -- schedules ----------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def temperature(self, step: int) -> float:
        c = self.config
        return temperature_at(step / self.total_steps, c.t0, c.t_last, c.temperature_schedule)

    def target(self, epoch: int) -> float:
        return 1.0 if epoch < self.config.target_begin_epoch else self.config.target

    # -- per step -----------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Set the Gumbel temperature of the current step on the model."""
        self.dynamic.set_temperature(self.temperature(self.state.step))

    def sparsity(self, stats: ModelStats, epoch: int, batch: int) -> torch.Tensor:
        """The sparsity loss of a batch's statistics at this point of training (before ``λ``)."""
        progress = (epoch + batch / self.steps_per_epoch) / self.config.epochs
        return sparsity_loss(stats, self.target(epoch), progress, self.config.bounds_relax_until).total

    def autocast(self):
        return autocast(self.env.device, self.config.amp)

    def optimise(self, loss: torch.Tensor, epoch: int, batch: int) -> None:
        """Backward, optimiser and schedule step for ``loss``; a non-finite loss stops the run."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {batch}; "
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

    def epoch_metrics(self) -> dict[str, float]:
        """The schedule values every epoch's record carries."""
        return {"lr": self.optimizer.param_groups[0]["lr"], "temperature": self.temperature(self.state.step)}

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary also written to ``summary.json``."""
        c, env = self.config, self.env
        if env.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            c.save(self.output / "config.yaml")
        result = None
        for epoch in range(self.state.epoch, c.epochs):
            train_metrics = self.train_epoch(epoch)
            result = self.evaluate()
            self.state.epoch = epoch + 1
            score = self.score(result)
            is_best = score > self.state.best
            self.state.best = max(self.state.best, score)
            record = {"epoch": epoch + 1, **train_metrics, **self.val_record(result)}
            self.state.history.append(record)
            if env.is_main:
                self.report(record, result)
                self.records.write(self.state.history)
                self._save(is_best)
        if result is None:  # resumed a finished run: evaluate the final weights again
            result = self.evaluate()
        summary = self.summary(result)
        if env.is_main:
            write_text(self.output / SUMMARY, json.dumps(summary, indent=2))
            self.records.close()
        return summary

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`_restore` needs to continue the run exactly."""
        return {
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "temperature": self.temperature(self.state.step),
            "best": self.state.best,
            "history": self.state.history,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def _save(self, is_best: bool) -> None:
        checkpoint = self.checkpoint()
        save_torch(checkpoint, self.output / CHECKPOINT_LAST)
        metadata = {"model_config": json.dumps(checkpoint["model_config"]), "epoch": str(self.state.epoch)}
        save_safetensors(checkpoint["model"], self.output / "last.safetensors", metadata)
        if is_best:
            save_torch(checkpoint, self.output / CHECKPOINT_BEST)
            save_safetensors(checkpoint["model"], self.output / "best.safetensors", metadata)

    def _restore(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        self._check_same_run(path, checkpoint)
        try:
            load_state_dict(self.model, extract_state_dict(checkpoint), str(path))
            try:
                self.optimizer.load_state_dict(checkpoint["optimizer"])
            except ValueError as error:
                raise CheckpointError(f"{path}: its optimiser state does not fit this run's ({error}); --resume "
                                      "continues the run that wrote it, with the same model and settings") from None
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(epoch=int(checkpoint["epoch"]), step=int(checkpoint["step"]),
                                    best=float(checkpoint["best"]), history=list(checkpoint["history"]))
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        except (KeyError, TypeError) as error:
            raise UsageError(f"{path} is not a resumable laudnet checkpoint (missing {error})") from None
        log.info("resumed %s at epoch %d, step %d", path, self.state.epoch, self.state.step)

    def _check_same_run(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """``--resume`` continues the run that wrote ``path``: same model and spec, no fewer epochs."""
        fresh = f"to start from its weights instead, pass --weights {path} with another --output"
        if is_official_checkpoint(checkpoint):
            raise CheckpointError(f"{path} is an official LAUDNet checkpoint, not a laudnet run to resume; {fresh}")
        held = checkpoint.get("model_config")
        if not isinstance(held, dict) or "name" not in held:
            raise CheckpointError(f"{path} is not a resumable laudnet checkpoint (missing 'model_config')")
        difference = config_difference(held, self.model_config)
        if difference:
            raise CheckpointError(f"{path} was written by a run of {describe_config(held).describe()}; this run "
                                  f"builds {describe_config(self.model_config).describe()} ({difference}): --resume "
                                  f"continues the same run; {fresh}")
        done = checkpoint.get("epoch")
        if isinstance(done, int) and done > self.config.epochs:
            raise UsageError(f"{path} has already trained {done} epochs, more than epochs={self.config.epochs}: pass "
                             f"--epochs {done} (or more) to resume it")
