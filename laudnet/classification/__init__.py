"""Image classification: fine-tuning a LAUD model to a MACs target, evaluation and data."""

from .config import TrainConfig
from .data import SyntheticShapes, build_datasets
from .evaluation import EvalResult, evaluate, evaluate_checkpoint
from .training import Trainer, train

__all__ = ["EvalResult", "SyntheticShapes", "TrainConfig", "Trainer", "build_datasets", "evaluate",
           "evaluate_checkpoint", "train"]
