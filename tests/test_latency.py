"""The latency predictor: agreement with the paper's simulator, determinism, sanity, model walk."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from laudnet.latency import BlockDensity, get_hardware, predict, resolve_shape
from laudnet.latency.analytic import operators as op
from laudnet.latency.design.search import channel_candidates, search_granularity, spatial_candidates
from laudnet.latency.analytic.tiles import peak_channel_density
from laudnet.models.registry import create_model

# ResNet-50 at 224², latency_mode "add", reference-compatible residual totals in ms per batch,
# as printed by the official DyNetSimulator (eval_example.py) for these settings.
OFFICIAL = {
    ("v100", "static", None, 1): 116.211,
    ("v100", "spatial", 0.5, "1"): 153.902,
    ("v100", "spatial", 0.5, "4-4-2-1"): 99.740,
    ("v100", "layer", 0.5, 1): 68.143,
    ("v100", "channel", 0.5, 1): 68.753,
    ("tx2", "static", None, 1): 17.226,
    ("tx2", "spatial", 0.5, "1"): 12.188,
    ("tx2", "spatial", 0.5, "4-4-2-1"): 12.005,
    ("tx2", "layer", 0.5, 1): 9.907,
    ("tx2", "channel", 0.5, 1): 9.316,
}


@pytest.mark.parametrize("key", list(OFFICIAL), ids=lambda k: "-".join(map(str, k)))
def test_agrees_with_the_official_simulator(key):
    hardware, mode, density, granularity = key
    report = predict(
        "laud_resnet50", hardware, mode=mode, density=density, spatial_granularity=granularity,
        channel_granularity=1, reference_compatible=True,
    )
    assert report.residual_ms == pytest.approx(OFFICIAL[key], rel=0.01)
    assert report.batch == (128 if hardware == "v100" else 1)


def test_reference_compatible_leaves_out_only_stride_1_projections():
    full = predict("laud_resnet50", "v100")
    reference = predict("laud_resnet50", "v100", reference_compatible=True)
    stage1_projection = full.blocks[0].ops_ms["projection"]
    assert full.residual_ms - reference.residual_ms == pytest.approx(stage1_projection)
    assert full.model_ms == reference.model_ms
    assert full.model_ms == pytest.approx(full.stem_ms + full.residual_ms + full.head_ms)
    assert full.per_image_ms == pytest.approx(full.model_ms / 128)
    assert sum(full.stages_ms) == pytest.approx(full.residual_ms)


def test_same_number_in_process_and_across_processes():
    kwargs = dict(mode="both", density=0.37, spatial_granularity="4-4-2-1", channel_granularity=2)
    first = predict("laud_resnet50", "v100", **kwargs).model_ms
    op.clear_caches()
    assert predict("laud_resnet50", "v100", **kwargs).model_ms == first
    code = (
        "from laudnet.latency import predict; print(repr(predict('laud_resnet50', 'v100', mode='both', density=0.37,"
        " spatial_granularity='4-4-2-1', channel_granularity=2).model_ms))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == repr(first)


@pytest.mark.parametrize("hardware", ["v100", "tx2"])
@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_latency_grows_with_density(hardware, mode):
    latencies = [predict("laud_resnet50", hardware, mode=mode, density=d / 10).model_ms for d in range(11)]
    assert all(b >= a for a, b in zip(latencies, latencies[1:]))
    assert latencies[-1] > latencies[0]


@pytest.mark.parametrize("mode", ["static", "spatial"])
def test_latency_grows_with_batch(mode):
    density = None if mode == "static" else 0.5
    batches = (1, 4, 16, 64, 256)
    latencies = [predict("laud_resnet50", "v100", mode=mode, density=density, batch=b).model_ms for b in batches]
    assert all(b > a for a, b in zip(latencies, latencies[1:]))


def test_latency_grows_with_channels():
    hw = get_hardware("rtx3060")
    convs = [op.conv(hw, c, c, (28, 28), 3) for c in (16, 32, 64, 128, 256, 512, 1024)]
    assert all(b > a for a, b in zip(convs, convs[1:]))
    fcs = [op.fc(hw, 2048, c) for c in (10, 100, 1000, 10000)]
    assert all(b > a for a, b in zip(fcs, fcs[1:]))
    assert predict("laud_resnet101", "nano").model_ms > predict("laud_resnet50", "nano").model_ms
    assert predict("laud_regnet_y_800mf", "nano").model_ms > predict("laud_regnet_y_400mf", "nano").model_ms


@pytest.mark.parametrize("model", ["laud_resnet50", "laud_regnet_y_400mf"])
def test_skipping_every_layer_costs_only_gates_and_shortcuts(model):
    report = predict(model, "tx2", mode="layer", density=0.0)
    for block in report.blocks:
        paid = {name for name, ms in block.ops_ms.items() if ms > 0}
        assert paid == ({"gate", "projection"} if block.ops_ms.get("projection") else {"gate"})
    static = predict(model, "tx2")
    assert report.residual_ms < 0.2 * static.residual_ms


def test_dynamic_modes_beat_static_at_low_density():
    static = predict("laud_resnet50", "v100").model_ms
    for mode in ("channel", "layer"):
        assert predict("laud_resnet50", "v100", mode=mode, density=0.3).model_ms < static
    spatial = predict("laud_resnet50", "v100", mode="spatial", density=0.3, spatial_granularity="4-4-2-1")
    assert spatial.model_ms < static


# ---------------------------------------------------------------------------- model walk

def _stages(*stages):
    """Expand (depth, in, width, out, groups, stride, in_size, se_first, se_rest) per stage."""
    blocks = []
    for stage, (depth, cin, width, cout, groups, stride, size, se_first, se_rest) in enumerate(stages):
        out = -(-size // stride)
        blocks.append((stage, cin, width, cout, stride, groups, se_first, True, (size, size), (out, out)))
        blocks += [(stage, cout, width, cout, 1, groups, se_rest, False, (out, out), (out, out))] * (depth - 1)
    return blocks


WALKS = {
    "laud_resnet50": _stages(
        (3, 64, 64, 256, 1, 1, 56, 0, 0), (4, 256, 128, 512, 1, 2, 56, 0, 0),
        (6, 512, 256, 1024, 1, 2, 28, 0, 0), (3, 1024, 512, 2048, 1, 2, 14, 0, 0),
    ),
    "laud_resnet101": _stages(
        (3, 64, 64, 256, 1, 1, 56, 0, 0), (4, 256, 128, 512, 1, 2, 56, 0, 0),
        (23, 512, 256, 1024, 1, 2, 28, 0, 0), (3, 1024, 512, 2048, 1, 2, 14, 0, 0),
    ),
    "laud_regnet_y_400mf": _stages(
        (1, 32, 48, 48, 6, 2, 112, 8, 12), (3, 48, 104, 104, 13, 2, 56, 12, 26),
        (6, 104, 208, 208, 26, 2, 28, 26, 52), (6, 208, 440, 440, 55, 2, 14, 52, 110),
    ),
    "laud_regnet_y_800mf": _stages(
        (1, 32, 64, 64, 4, 2, 112, 8, 16), (3, 64, 144, 144, 9, 2, 56, 16, 36),
        (8, 144, 320, 320, 20, 2, 28, 36, 80), (2, 320, 784, 784, 49, 2, 14, 80, 196),
    ),
}


@pytest.mark.parametrize("model", list(WALKS))
def test_model_walk_matches_hand_written_blocks(model):
    shape = resolve_shape(model, 224)
    walked = [
        (b.stage, b.in_channels, b.width, b.out_channels, b.stride, b.groups, b.se_channels, b.has_projection,
         b.in_hw, b.out_hw)
        for b in shape.blocks
    ]
    assert walked == WALKS[model]
    report = predict(model, "tx2")
    assert [b.name for b in report.blocks] == [b.name for b in shape.blocks]


def test_model_instance_uses_its_own_spec():
    with torch.device("meta"):
        model = create_model("laud_resnet50", mode="spatial", spatial_granularity="4-4-2-1")
    from_model = predict(model, "v100", density=0.5, reference_compatible=True)
    assert from_model.spec.describe() == "spatial-spatial-spatial-spatial S=4-4-2-1"
    assert from_model.residual_ms == pytest.approx(OFFICIAL[("v100", "spatial", 0.5, "4-4-2-1")], rel=0.01)
    overridden = predict(model, "v100", mode="layer", density=0.5, reference_compatible=True)
    assert overridden.residual_ms == pytest.approx(OFFICIAL[("v100", "layer", 0.5, 1)], rel=0.01)


def test_non_square_input_walks_the_real_feature_sizes():
    kwargs = dict(mode="spatial", density=0.5, spatial_granularity=2)
    report = predict("laud_resnet50", "tx2", input_size="197x263", **kwargs)
    assert report.input_size == (197, 263)
    assert resolve_shape("laud_resnet50", "197x263").blocks[-1].out_hw == (7, 9)
    smaller = predict("laud_resnet50", "tx2", input_size=197, **kwargs).model_ms
    larger = predict("laud_resnet50", "tx2", input_size=263, **kwargs).model_ms
    assert smaller < report.model_ms < larger


# ---------------------------------------------------------------------------- channel imbalance

def _brute_force_peak(n_tiles: int, tile: int, density: float, group: int) -> float:
    """E[max over tiles of active channels] / tile by enumerating every mask."""
    n_groups = -(-n_tiles * tile // group)
    expected = 0.0
    for mask in itertools.product((0, 1), repeat=n_groups):
        channels = np.repeat(mask, group)[: n_tiles * tile].reshape(n_tiles, tile)
        on = sum(mask)
        expected += density**on * (1 - density) ** (n_groups - on) * channels.sum(1).max()
    return expected / tile


@pytest.mark.parametrize("n_tiles,tile,group", [(3, 4, 1), (3, 4, 2), (2, 6, 3), (4, 2, 4), (6, 2, 4), (1, 8, 1)])
def test_channel_imbalance_is_exact_for_aligned_groups(n_tiles, tile, group):
    for density in (0.2, 0.5, 0.9):
        peak = peak_channel_density(n_tiles * tile, np.array([tile]), density, group)[0]
        assert peak == pytest.approx(_brute_force_peak(n_tiles, tile, density, group), rel=1e-9)


def test_channel_imbalance_bounds_and_monotonicity():
    tiles = np.array([1.0, 3.0, 8.0, 13.0, 64.0])
    previous = np.zeros(len(tiles))
    for density in np.linspace(0, 1, 11):
        peak = peak_channel_density(256, tiles, density, 4)
        assert np.all(peak >= density - 1e-12) and np.all(peak <= 1.0 + 1e-12)
        assert np.all(peak >= previous - 1e-12)
        previous = peak


# ---------------------------------------------------------------------------- granularity search

def test_search_picks_the_fastest_valid_granularity():
    result = search_granularity("laud_resnet50", "v100", "spatial", 0.5, reference_compatible=True)
    assert result.latency_ms <= result.baseline_ms < 1.4 * result.static_ms
    assert result.baseline_ms == pytest.approx(OFFICIAL[("v100", "spatial", 0.5, "1")], rel=0.01)
    for choice, size in zip(result.stages, (56, 28, 14, 7)):
        assert choice.latency_ms == min(choice.latencies_ms)
        assert choice.candidates[0] == (1, 1)
        assert all(size % s == 0 and g == 1 for s, g in choice.candidates)
    chosen = predict(
        "laud_resnet50", "v100", mode="spatial", density=0.5, reference_compatible=True,
        spatial_granularity=[c.spatial_granularity for c in result.stages],
    )
    assert chosen.residual_ms == pytest.approx(result.latency_ms)


def test_channel_candidates_keep_conv_groups_whole():
    shape = resolve_shape("laud_regnet_y_400mf")
    assert channel_candidates(shape.blocks[0]) == (8, 16, 24)
    assert channel_candidates(resolve_shape("laud_resnet50").blocks[0]) == (1, 2, 4, 8, 16, 32)
    assert spatial_candidates((56, 56)) == (1, 2, 4, 7, 8, 14, 28, 56)
    result = search_granularity("laud_regnet_y_400mf", "tx2", "channel", 0.5)
    assert all(c.channel_granularity % (b.width // b.groups) == 0
               for c, b in zip(result.stages, [shape.stage_blocks(i)[0] for i in range(4)]))


def test_search_needs_a_searchable_mode():
    with pytest.raises(ValueError, match="spatial, channel or both"):
        search_granularity("laud_resnet50", "v100", "layer", 0.5)


# ---------------------------------------------------------------------------- bad input

def test_unknown_hardware_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown hardware 'gpu9000'.*v100"):
        predict("laud_resnet50", "gpu9000")


@pytest.mark.parametrize("density", [-0.1, 1.5, True, "half"])
def test_density_outside_unit_interval_is_rejected(density):
    with pytest.raises(ValueError, match=r"density must be a number in \[0, 1\]"):
        predict("laud_resnet50", "v100", mode="spatial", density=density)


def test_dynamic_mode_needs_densities():
    with pytest.raises(ValueError, match="give a density"):
        predict("laud_resnet50", "v100", mode="channel")
    with pytest.raises(ValueError, match="positive integer"):
        predict("laud_resnet50", "v100", batch=0)
    with pytest.raises(ValueError, match="unknown mode"):
        predict("laud_resnet50", "v100", mode="sparse", density=0.5)
    with pytest.raises(ValueError, match="block width"):
        predict("laud_resnet50", "v100", mode="channel", density=0.5, channel_granularity=4096)
    with pytest.raises(ValueError, match="conv1 density"):
        BlockDensity(conv1=2.0)
