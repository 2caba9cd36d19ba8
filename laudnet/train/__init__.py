"""Deprecated: classification training is :mod:`laudnet.classification`, the shared loop :mod:`laudnet.training`."""

from .._deprecation import module_getattr

__getattr__ = module_getattr(__name__, {
    "train": "laudnet.classification:train",
    "Trainer": "laudnet.classification:Trainer",
    "TrainConfig": "laudnet.classification:TrainConfig",
    "EvalResult": "laudnet.classification:EvalResult",
    "evaluate": "laudnet.classification:evaluate",
    "SyntheticShapes": "laudnet.classification:SyntheticShapes",
    "RunConfig": "laudnet.training:RunConfig",
    "EpochTrainer": "laudnet.training:EpochTrainer",
    "sparsity_loss": "laudnet.training:sparsity_loss",
    "distillation_loss": "laudnet.training:distillation_loss",
    "block_bounds": "laudnet.training:block_bounds",
})
