"""The sparse engine against the masked model: same logits, and exactly the dynamic MACs executed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from laudnet import create_model
from laudnet.sparse import SparseModel, set_gate_density, convert

from helpers import randomize_

ODD_SIZE = (97, 75)
DENSITIES = (0.0, 0.3, 0.7, 1.0)

# Per-stage granularities cover S = 1, 2, 4, 7 and G = 1, 2, 4 in every mode. RegNetY-400MF's
# channel groups must be whole conv groups (width 8); its stage widths are 6, 13, 26 and 55
# conv groups, so G = 8-8-8-8 and 16-8-16-40 are the multiples that divide every stage.
CONFIGS = {
    "laud_resnet50": [
        ("spatial", {"spatial_granularity": "1-2-4-7"}),
        ("spatial", {"spatial_granularity": "7-4-2-1"}),
        ("channel", {"channel_granularity": "1-2-4-1"}),
        ("channel", {"channel_granularity": "4-4-2-2"}),
        ("layer", {}),
        ("both", {"spatial_granularity": "2-7-1-4", "channel_granularity": "4-1-2-4"}),
        ("both", {"spatial_granularity": "4-1-7-2", "channel_granularity": "2-4-1-1"}),
    ],
    "laud_regnet_y_400mf": [
        ("spatial", {"spatial_granularity": "1-2-4-7"}),
        ("spatial", {"spatial_granularity": "7-4-2-1"}),
        ("channel", {"channel_granularity": "8-8-8-8"}),
        ("channel", {"channel_granularity": "16-8-16-40"}),
        ("layer", {}),
        ("both", {"spatial_granularity": "2-7-1-4", "channel_granularity": "16-8-16-40"}),
        ("both", {"spatial_granularity": "4-1-7-2", "channel_granularity": "8-8-8-8"}),
    ],
}
CASES = [(name, mode, kwargs) for name, configs in CONFIGS.items() for mode, kwargs in configs]
FIRST_OF_MODE = {(name, mode): kwargs for name, mode, kwargs in reversed(CASES)}


def _build(name: str, mode: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_(create_model(name, mode=mode, **kwargs), seed).eval()


def _check(model: torch.nn.Module, engine: SparseModel, x: torch.Tensor):
    """Engine logits within 1e-4 (relative) of the masked model's, and executed MACs = dynamic MACs."""
    with torch.no_grad():
        want = model(x, return_stats=True)
        with FlopCounterMode(display=False) as counter:
            got = engine(x)
    error = float((got - want.logits).abs().max() / want.logits.abs().max())
    assert error <= 1e-4, f"relative error {error:.2e}"
    executed = counter.get_total_flops() / 2
    assert executed == pytest.approx(float(want.stats.dynamic_macs.sum()), rel=1e-9)
    return want.stats


def _masks_differ_across_samples(stats) -> bool:
    for block in stats.blocks:
        for mask in (block.spatial_mask, block.channel_mask):
            if mask is not None and not torch.equal(mask, mask[:1].expand_as(mask)):
                return True
    return False


@pytest.mark.parametrize("name, mode, kwargs", CASES, ids=[f"{n}-{m}-{'-'.join(map(str, k.values()))}" for n, m, k in CASES])
def test_engine_equals_masked_model_and_executes_the_dynamic_macs(name, mode, kwargs):
    model = _build(name, mode, **kwargs)
    engine = convert(model, backend="torch")  # shares the maskers: calibrating the model below steers the engine too
    x = torch.randn(4, 3, *ODD_SIZE)
    # All-off and all-on take the simplest paths; once per model and mode is enough.
    densities = DENSITIES if FIRST_OF_MODE[(name, mode)] is kwargs else (0.3, 0.7)
    for density in densities:
        set_gate_density(model, density, x)
        stats = _check(model, engine, x)
        _check(model, engine, x[1:2])
        ratio = stats.macs_ratio
        if density == 0.0:
            assert float(ratio.max()) < 0.3
        elif density == 1.0:
            assert torch.all(ratio > 1.0)  # every gate on; the maskers' own MACs count
        else:
            assert 0.05 < float(ratio.mean()) < 0.95
            assert _masks_differ_across_samples(stats), "the batch should mix different masks"


@pytest.mark.parametrize("name, mode", list(FIRST_OF_MODE))
def test_engine_at_224(name, mode):
    model = _build(name, mode, seed=1, **FIRST_OF_MODE[(name, mode)])
    engine = convert(model, backend="torch")
    x = torch.randn(4, 3, 224, 224)
    set_gate_density(model, 0.5, x)  # on 4 images, so that whole-block gates can reach 0.5 too
    batch = 4 if (name, mode) == ("laud_resnet50", "both") else 1  # one mixed batch at 224² keeps the suite fast
    stats = _check(model, engine, x[:batch])
    assert 0.1 < float(stats.macs_ratio.mean()) < 0.9
    if batch > 1:
        assert _masks_differ_across_samples(stats)


def test_channels_all_off_leave_conv3_bias():
    """With every channel skipped the branch is conv3 of zeros: its folded BN shift, added where computed."""
    model = _build("laud_resnet50", "both", spatial_granularity=2, width_multiplier=0.25)
    engine = convert(model, backend="torch")
    x = torch.randn(2, 3, 64, 48)
    set_gate_density(model, 0.5, x)
    for _, block in model.named_dynamic_blocks():
        block.masker_channel.force = False
    stats = _check(model, engine, x)
    assert all(torch.all(b.channel_density == 0) for b in stats.blocks)
    assert 0.0 < float(torch.stack([b.conv3_density for b in stats.blocks]).mean()) < 1.0
    model.set_forced_gates(True)
    for _, block in model.named_dynamic_blocks():
        block.masker_channel.force = False
    _check(model, engine, x)


def test_before_bn_channel_masks_are_rejected():
    model = create_model("laud_resnet50", mode="channel", width_multiplier=0.25, channel_mask_placement="before_bn")
    with pytest.raises(ValueError, match="before_bn.*accepts 'after_act'"):
        convert(model, backend="torch")
    # Without channel masks the placement changes nothing, so such a model converts.
    spatial = _build("laud_resnet50", "spatial", width_multiplier=0.25, channel_mask_placement="before_bn")
    _check(spatial, convert(spatial, backend="torch"), torch.randn(1, 3, 40, 56))


def test_engine_is_inference_only():
    model = create_model("laud_resnet50", mode="layer", width_multiplier=0.25)
    engine = convert(model, backend="torch")
    with pytest.raises(ValueError, match="inference-only"):
        engine.train()
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        engine(torch.randn(1, 3, 32, 32))


def test_static_models_and_unknown_models():
    model = _build("laud_regnet_y_400mf", "static")
    _check(model, convert(model, backend="torch"), torch.randn(2, 3, 64, 80))
    with pytest.raises(ValueError, match="expected a LAUD model or a detector"):
        convert(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_set_gate_density_reaches_the_density(mode):
    model = create_model("laud_resnet50", mode=mode, spatial_granularity=2, width_multiplier=0.25)
    images = torch.randn(8, 3, 64, 64)
    for density in (0.0, 0.25, 0.6, 1.0):
        result = set_gate_density(model, density, images)
        tolerance = 0.07 if mode == "layer" else 0.01  # one decision per image: steps of 1/8
        assert result.achieved == pytest.approx(density, abs=tolerance)
        assert set(result.blocks) == {name for name, _ in model.named_dynamic_blocks()}
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\]"):
        set_gate_density(model, 1.5, images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_engine_on_cuda(mode):
    model = _build("laud_regnet_y_400mf", mode, spatial_granularity=2).cuda()
    x = torch.randn(4, 3, *ODD_SIZE, device="cuda")
    set_gate_density(model, 0.5, x)
    engine = convert(model, backend="torch")
    with torch.no_grad():
        want, got = model(x), engine(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
