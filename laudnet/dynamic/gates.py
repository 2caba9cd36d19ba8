"""Binary gates from two-logit maskers, and the Gumbel temperature schedules.

Every masker emits a pair of logits per decision along dim 1, index 0 meaning *compute*
and index 1 meaning *skip*. In training the decision is a straight-through hard
Gumbel-softmax sample (the forward pass sees exact 0/1 values, the backward pass the
soft relaxation at the current temperature); in evaluation it is the deterministic
comparison ``logit_on >= logit_off``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from ..errors import UsageError

TEMPERATURE_SCHEDULES: tuple[str, ...] = ("exp", "linear", "cosine")


def gate(logits: torch.Tensor, temperature: float, training: bool, force: bool | None = None) -> torch.Tensor:
    """Return a 0/1 gate tensor with dim 1 of ``logits`` (size 2) removed.

    ``force`` overrides the decision (all on / all off, no gradient); used by tests, the
    sparse-engine benchmark and to compare against static models.
    """
    if logits.shape[1] != 2:
        raise ValueError(f"gate logits must have size 2 along dim 1, got shape {tuple(logits.shape)}")
    if force is not None:
        shape = (logits.shape[0],) + tuple(logits.shape[2:])
        return torch.full(shape, float(force), dtype=logits.dtype, device=logits.device)
    if training:
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=1)[:, 0]
    return (logits[:, 0] >= logits[:, 1]).to(logits.dtype)


def temperature_at(progress: float, t0: float = 5.0, t_last: float = 0.1, schedule: str = "exp") -> float:
    """Gumbel temperature at ``progress`` ∈ [0, 1] of training, from ``t0`` down to ``t_last``.

    ``exp`` decays geometrically (``t0 · (t_last/t0)^progress``), ``linear`` linearly and
    ``cosine`` along half a cosine.
    """
    if schedule not in TEMPERATURE_SCHEDULES:
        raise UsageError(f"unknown temperature schedule {schedule!r}; accepted: {', '.join(TEMPERATURE_SCHEDULES)}")
    if t0 <= 0 or t_last <= 0:
        raise UsageError(f"temperatures must be positive, got t0={t0}, t_last={t_last}")
    p = min(max(progress, 0.0), 1.0)
    if schedule == "exp":
        return t0 * (t_last / t0) ** p
    if schedule == "linear":
        return t0 + (t_last - t0) * p
    return t_last + 0.5 * (t0 - t_last) * (1.0 + math.cos(math.pi * p))
