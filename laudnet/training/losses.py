"""The LAUDNet training objective: task loss + λ · sparsity + α · distillation.

Sparsity (as in the paper and its official code): the whole model's MACs ratio is pulled to
the target, and each dynamic block's MACs ratio is kept inside bounds that start at
``[target, target]`` and relax to ``[0, 1]`` over the first third of training, so no block
collapses early while blocks may specialise later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dynamic.stats import ModelStats


@dataclass(frozen=True)
class Bounds:
    """Allowed range of a block's MACs ratio at some point of training."""

    lower: float
    upper: float


def block_bounds(progress: float, target: float, relax_until: float = 0.33) -> Bounds:
    """Bounds at ``progress`` ∈ [0, 1]: ``p = cos²(π/2 · min(1, progress / relax_until))``,
    ``upper = 1 − p(1 − target)``, ``lower = p · target``."""
    p = math.cos(math.pi / 2 * min(1.0, max(progress, 0.0) / relax_until)) ** 2
    return Bounds(lower=p * target, upper=1.0 - p * (1.0 - target))


@dataclass
class SparsityTerms:
    """The two parts of the sparsity loss (tensors, for backward) and their sum."""

    overall: torch.Tensor
    blocks: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.overall + self.blocks


def sparsity_loss(stats: ModelStats, target: float, progress: float, relax_until: float = 0.33) -> SparsityTerms:
    """``(ratio − target)²`` plus the mean over dynamic blocks of the squared bound violations.

    Ratios are batch means of per-sample MACs ratios.
    """
    overall = (stats.macs_ratio.mean() - target) ** 2
    bounds = block_bounds(progress, target, relax_until)
    ratios = [b.macs_ratio.mean() for b in stats.blocks if b.dynamic]
    if ratios:
        r = torch.stack(ratios)
        violations = F.relu(r - bounds.upper) ** 2 + F.relu(bounds.lower - r) ** 2
        blocks = violations.mean()
    else:
        blocks = torch.zeros_like(overall)
    return SparsityTerms(overall=overall.float(), blocks=blocks.float())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """``KL(softmax(teacher/T) ‖ softmax(student/T)) · T²``, averaged over the batch."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student.float() / t, dim=1), F.softmax(teacher.float() / t, dim=1), reduction="batchmean"
    ) * (t * t)
