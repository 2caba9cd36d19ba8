"""What every training task shares: the epoch loop, configuration, losses, optimisation, records."""

from .config import RunConfig
from .loop import EpochTrainer
from .losses import block_bounds, distillation_loss, sparsity_loss

__all__ = ["EpochTrainer", "RunConfig", "block_bounds", "distillation_loss", "sparsity_loss"]
