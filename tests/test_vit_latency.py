"""The transformer latency model: the official simulator's numbers, laudnet's engine, design tools, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from laudnet.cli import main
from laudnet.errors import UsageError
from laudnet.latency import PRESETS, predict, search_granularity
from laudnet.latency.analytic import transformer
from laudnet.latency.calibrated import CalibratedModel
from laudnet.latency.costs import EngineCosts
from laudnet.latency.design.suggest import suggest
from laudnet.latency.interface import BlockDensity

# The official DyNetSimulator (adavit/simulate_adavit.py: 12 x simulate_ada_block with DeiT-S's
# in_dim=384, head_num=6, mlp_ratio=4, L=197, B=1 on the preset's predictor), ms, blocks only.
REFERENCE = {
    ("v100", "static", None): 172.307,
    ("v100", "spatial", 0.5): 99.4725,
    ("v100", "channel", 0.5): 122.6722,
    ("v100", "layer", 0.5): 87.8267,
    ("tx2", "static", None): 23.3954,
    ("tx2", "spatial", 0.5): 15.3482,
}


@pytest.mark.parametrize("hardware, mode, density", list(REFERENCE))
def test_reference_compatible_blocks_reproduce_the_official_simulator(hardware, mode, density):
    report = predict("laud_deit_small", hardware, mode=mode, density=density, reference_compatible=True)
    assert report.batch == PRESETS[hardware].batch_size
    assert report.residual_ms == pytest.approx(REFERENCE[hardware, mode, density], rel=1e-5)


def test_engine_prediction_follows_the_work():
    static = predict("laud_deit_small", "v100", mode="static")
    ms = {m: predict("laud_deit_small", "v100", mode=m, density=0.5).residual_ms
          for m in ("spatial", "channel", "layer", "spatial+channel+layer")}
    assert ms["spatial+channel+layer"] < ms["spatial"] < ms["layer"] < ms["channel"] < static.residual_ms
    full = predict("laud_deit_small", "v100", mode="spatial", density=1.0)
    assert full.residual_ms > static.residual_ms  # the maskers, gathers and scatters cost a little
    assert static.model_ms == pytest.approx(static.stem_ms + static.residual_ms + static.head_ms)
    block = static.blocks[0]
    assert {"qkv", "attention", "proj", "fc1", "fc2", "norm1", "norm2", "gelu"} <= set(block.ops_ms)
    # Per-image shapes: batch 128 costs about 128 images, far from 128 x 128 (the batch applied twice).
    one = predict("laud_deit_small", "v100", mode="static", batch=1)
    assert 20 < static.model_ms / one.model_ms < 128
    assert predict("laud_deit_base", "v100", mode="static").model_ms > 2.5 * static.model_ms  # 3.8x the MACs


def test_densities_of_a_run_decode_to_tokens_heads_and_sub_blocks():
    spec = dataclasses.replace(predict("laud_deit_small", "v100", mode="spatial+channel+layer", density=0.5).spec.stages[0])
    f = transformer.fractions(spec, BlockDensity(conv1=0.25, conv2=0.5, conv3=0.5, channel=0.75))
    assert (f.tokens, f.heads, f.attention, f.mlp) == (0.5, 0.75, 0.5, 1.0)
    uniform = transformer.fractions(spec, BlockDensity.uniform(spec.mode, 0.5))
    assert (uniform.tokens, uniform.heads, uniform.attention, uniform.mlp) == (0.5, 0.5, 0.5, 0.5)


def test_design_tools_take_vits():
    result = search_granularity("laud_deit_small", "tx2", "token", 0.5)
    assert all(c.candidates == ((1, 1),) for c in result.stages)  # nothing to search: S = G = 1
    assert result.latency_ms < result.static_ms
    target = 0.7 * predict("laud_deit_small", "tx2", mode="static", batch=1).model_ms
    suggestion = suggest("laud_deit_small", "tx2", target, batch=1, modes=("spatial", "layer"))
    assert suggestion.choice.predicted_ms <= target
    assert 0.3 < suggestion.choice.macs_ratio < 0.8


def test_calibrated_profiles_refuse_vits():
    profile = dataclasses.replace(PRESETS["tx2"], name="here", engine=EngineCosts.build("cpu", 2, {}))
    with pytest.raises(UsageError, match="no ViT blocks"):
        predict("laud_deit_small", CalibratedModel(profile), mode="static")


def test_cli_predicts_a_vit(capsys):
    assert main(["latency", "predict", "laud_deit_small", "--hardware", "tx2", "--mode", "token-head-layer",
                 "--density", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["mode"] for s in report["spec"]["stages"]] == ["spatial+channel+layer"] * 4
    assert main(["model", "macs", "laud_deit_small", "--mode", "token", "--density", "0.5", "--json"]) == 0
    assert 0.45 < json.loads(capsys.readouterr().out)["macs_ratio"] < 0.5
