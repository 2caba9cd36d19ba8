"""The pieces of the training objective and the schedules, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from laudnet.dynamic.gates import temperature_at
from laudnet.dynamic.stats import BlockStats, ModelStats
from laudnet.training.losses import block_bounds, distillation_loss, sparsity_loss


@pytest.mark.parametrize(
    "progress, lower, upper",
    [
        (0.0, 0.5, 0.5),           # p = 1: the bounds start at the target
        (0.165, 0.25, 0.75),       # p = cos²(π/4) = 0.5
        (0.11, 0.375, 0.625),      # p = cos²(π/6) = 0.75
        (0.33, 0.0, 1.0),          # p = 0: fully relaxed
        (0.9, 0.0, 1.0),
    ],
)
def test_block_bounds_relax_from_target_to_unit_interval(progress, lower, upper):
    bounds = block_bounds(progress, target=0.5)
    assert bounds.lower == pytest.approx(lower, abs=1e-12)
    assert bounds.upper == pytest.approx(upper, abs=1e-12)


@pytest.mark.parametrize(
    "schedule, progress, expected",
    [
        ("exp", 0.0, 5.0), ("exp", 0.5, 5.0 * math.sqrt(0.02)), ("exp", 1.0, 0.1),
        ("linear", 0.5, 2.55), ("linear", 0.25, 3.775),
        ("cosine", 0.5, 2.55), ("cosine", 0.25, 0.1 + 2.45 * (1 + math.sqrt(0.5))), ("cosine", 1.0, 0.1),
    ],
)
def test_temperature_schedules(schedule, progress, expected):
    assert temperature_at(progress, 5.0, 0.1, schedule) == pytest.approx(expected, rel=1e-12)


def test_temperature_schedule_rejects_unknown_names():
    with pytest.raises(ValueError, match="accepted: exp, linear, cosine"):
        temperature_at(0.5, schedule="step")


def _block(name: str, ratio: list[float], dynamic: bool = True) -> BlockStats:
    ones = torch.ones(len(ratio), dtype=torch.float64)
    return BlockStats(name, 0, dynamic, ones, ones, ones, ones, dense_macs=100,
                      dynamic_macs=100 * torch.tensor(ratio, dtype=torch.float64))


def test_sparsity_loss_by_hand():
    blocks = [_block("a", [0.9, 0.7]), _block("b", [0.1, 0.3]), _block("static", [1.0, 1.0], dynamic=False)]
    stats = ModelStats(blocks, dense_macs=1000, dynamic_macs=torch.tensor([600.0, 700.0], dtype=torch.float64))
    terms = sparsity_loss(stats, target=0.5, progress=0.165)  # bounds [0.25, 0.75]
    assert terms.overall.item() == pytest.approx((0.65 - 0.5) ** 2)
    # block a: mean 0.8 exceeds 0.75 by 0.05; block b: mean 0.2 is 0.05 below 0.25; static block ignored
    assert terms.blocks.item() == pytest.approx((0.05**2 + 0.05**2) / 2)
    assert terms.total.item() == pytest.approx(0.0225 + 0.0025)


def test_sparsity_loss_has_gradients_towards_the_target():
    ratio = torch.tensor([0.9], dtype=torch.float64, requires_grad=True)
    block = _block("a", [0.9])
    block.dynamic_macs = 100 * ratio
    stats = ModelStats([block], dense_macs=100, dynamic_macs=100 * ratio)
    sparsity_loss(stats, target=0.5, progress=0.0).total.backward()
    assert ratio.grad.item() > 0  # descending lowers the ratio


def test_distillation_loss():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    assert distillation_loss(student, student.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    p = torch.softmax(teacher / 2, dim=1)
    log_q = torch.log_softmax(student / 2, dim=1)
    expected = (p * (p.log() - log_q)).sum() * 4
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
