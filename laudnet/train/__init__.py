"""Training: sparsity loss, distillation, the shared run loop, classification's train/eval loops, data and configuration."""

from .config import RunConfig, TrainConfig, load_config
from .data import SyntheticShapes
from .engine import EvalResult, Trainer, evaluate, train
from .losses import block_bounds, distillation_loss, sparsity_loss
from .runner import EpochTrainer

__all__ = [
    "EpochTrainer", "EvalResult", "RunConfig", "SyntheticShapes", "TrainConfig", "Trainer", "block_bounds",
    "distillation_loss", "evaluate", "load_config", "sparsity_loss", "train",
]
