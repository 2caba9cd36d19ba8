"""Training: sparsity loss, distillation, the train/eval loops, data and configuration."""

from .config import TrainConfig, load_config
from .data import SyntheticShapes
from .engine import EvalResult, Trainer, evaluate, train
from .losses import block_bounds, distillation_loss, sparsity_loss

__all__ = [
    "EvalResult", "SyntheticShapes", "TrainConfig", "Trainer", "block_bounds", "distillation_loss", "evaluate",
    "load_config", "sparsity_loss", "train",
]
