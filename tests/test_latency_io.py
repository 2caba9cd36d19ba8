"""Hardware specs in YAML, run summaries, and the latency commands."""

from __future__ import annotations

import dataclasses
import json

import pytest

from laudnet.cli import main
from laudnet.latency import PRESETS, Hardware, get_hardware, load_hardware, predict, read_summary, save_hardware

# ---------------------------------------------------------------------------- hardware


def test_presets_carry_the_papers_parameters():
    v100 = PRESETS["v100"]
    assert (v100.n_pes, v100.lanes_per_pe, v100.frequency_hz, v100.dram_bandwidth, v100.batch_size) == (
        80, 64, 1.5e9, 700e9, 128
    )
    assert PRESETS["rtx3090"].l2_bandwidth_ratio == 1.0
    assert (PRESETS["tx2"].n_pes, PRESETS["nano"].frequency_hz, PRESETS["nano"].batch_size) == (2, 0.921e9, 1)
    assert {"a100", "h100"} <= set(PRESETS)
    assert get_hardware("V100") is v100


def test_hardware_round_trips_through_yaml(tmp_path):
    custom = dataclasses.replace(PRESETS["rtx3060"], name="my-gpu", launch_time_s=5e-6, latency_mode="max")
    path = tmp_path / "my-gpu.yaml"
    save_hardware(custom, path)
    assert load_hardware(path) == custom
    assert predict("laud_resnet50", str(path)).hardware == "my-gpu"
    assert predict("laud_resnet50", path).model_ms == predict("laud_resnet50", custom).model_ms


def test_yaml_spec_accepts_numbers_written_as_text(tmp_path):
    path = tmp_path / "edge.yml"
    path.write_text("n_pes: 2\nlanes_per_pe: 128\nfrequency_hz: 1.3e9\ndram_bandwidth: 59.7e9\n")
    hw = load_hardware(path)
    assert hw == Hardware("edge", 2, 128, 1.3e9, 59.7e9)
    assert predict("laud_resnet50", hw).model_ms == predict("laud_resnet50", "tx2").model_ms


@pytest.mark.parametrize(
    "text,message",
    [
        ("n_pes: [1, 2\n", "not valid YAML"),
        ("- 80\n- 64\n", "expected a mapping"),
        ("n_pes: 80\n", "missing lanes_per_pe, frequency_hz, dram_bandwidth"),
        ("n_pes: 80\nlanes_per_pe: 64\nfrequency_hz: 1e9\ndram_bandwidth: 1e11\nsms: 3\n", "unknown keys sms"),
        ("n_pes: 80\nlanes_per_pe: 64\nfrequency_hz: fast\ndram_bandwidth: 1e11\n", "frequency_hz must be a number"),
        ("n_pes: 2.5\nlanes_per_pe: 64\nfrequency_hz: 1e9\ndram_bandwidth: 1e11\n", "n_pes must be an integer"),
        ("n_pes: -1\nlanes_per_pe: 64\nfrequency_hz: 1e9\ndram_bandwidth: 1e11\n", "n_pes must be positive"),
        ("n_pes: 8\nlanes_per_pe: 64\nfrequency_hz: 1e9\ndram_bandwidth: 1e11\nlatency_mode: sum\n", "latency_mode"),
    ],
)
def test_malformed_yaml_spec_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        get_hardware(str(path))
    assert str(path) in str(error.value)


def test_missing_yaml_spec(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_hardware(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------- run summaries


def _summary(path, names, density=0.5, **extra):
    blocks = [
        {"name": n, "stage": 0, "conv1_density": density, "conv2_density": density, "conv3_density": density,
         "channel_density": 1.0, "macs_ratio": density}
        for n in names
    ]
    data = {"top1": 70.0, "top5": 90.0, "macs_ratio": 0.5, "target": 0.5, "model": "laud_resnet50",
            "spec": {"mode": ["spatial"] * 4, "spatial_granularity": [4, 4, 2, 1], "channel_granularity": [1] * 4},
            "input_size": [224, 224], "blocks": blocks, **extra}
    path.write_text(json.dumps(data))
    return path


def _resnet50_names():
    return [b.name for b in predict("laud_resnet50", "tx2").blocks]


def test_summary_densities_and_spec_drive_the_prediction(tmp_path):
    path = _summary(tmp_path / "summary.json", _resnet50_names())
    summary = read_summary(path)
    assert summary.model == "laud_resnet50" and summary.input_size == (224, 224)
    from_stats = predict("laud_resnet50", "v100", stats=path, reference_compatible=True)
    assert from_stats.spec.describe() == "spatial-spatial-spatial-spatial S=4-4-2-1"
    assert from_stats.residual_ms == pytest.approx(99.740, rel=0.01)
    assert from_stats.residual_ms == predict(
        "laud_resnet50", "v100", mode="spatial", density=0.5, spatial_granularity="4-4-2-1", reference_compatible=True
    ).residual_ms


def test_summary_per_block_densities_are_used(tmp_path):
    names = _resnet50_names()
    path = _summary(tmp_path / "summary.json", names)
    data = json.loads(path.read_text())
    data["blocks"][0].update(conv1_density=0.1, conv2_density=0.1, conv3_density=0.1)
    path.write_text(json.dumps(data))
    report = predict("laud_resnet50", "v100", stats=path)
    uniform = predict("laud_resnet50", "v100", mode="spatial", density=0.5, spatial_granularity="4-4-2-1")
    assert report.blocks[0].total_ms < uniform.blocks[0].total_ms
    assert [b.total_ms for b in report.blocks[1:]] == [b.total_ms for b in uniform.blocks[1:]]


def test_summary_must_match_the_model(tmp_path):
    names = _resnet50_names()
    with pytest.raises(ValueError, match="15 blocks do not match the 16 blocks.*missing layer4.2"):
        predict("laud_resnet50", "v100", stats=_summary(tmp_path / "short.json", names[:-1]))
    with pytest.raises(ValueError, match="unknown layer5.0"):
        predict("laud_resnet50", "v100", stats=_summary(tmp_path / "extra.json", names + ["layer5.0"]))
    with pytest.raises(ValueError, match="layer1.0.*conv1 density must be a number in"):
        read_summary(_summary(tmp_path / "dense.json", names, density=1.2))
    with pytest.raises(ValueError, match="either a density or stats"):
        predict("laud_resnet50", "v100", density=0.5, stats=_summary(tmp_path / "both.json", names))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_summary(broken)


# ---------------------------------------------------------------------------- commands


def test_latency_command_json_has_the_report_fields(capsys):
    assert main(["latency", "predict", "laud_resnet50", "--hardware", "tx2", "--mode", "layer", "--density", "0.5",
                 "--reference-compatible", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["residual_ms"] == pytest.approx(9.907, rel=0.01)
    assert report["model_ms"] > report["residual_ms"] and report["per_image_ms"] == report["model_ms"]
    assert report["batch"] == 1 and report["hardware"] == "tx2" and len(report["blocks"]) == 16


def test_latency_command_table(capsys):
    assert main(["latency", "predict", "laud_resnet50", "--hardware", "v100", "--mode", "spatial", "--density", "0.5",
                 "-S", "4-4-2-1", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "batch 64" in out and "S=4-4-2-1" in out and "whole model, per image" in out
    assert main(["latency", "predict", "laud_resnet50", "--mode", "layer", "--density", "0.5", "--per-block"]) == 0
    assert "layer4.2" in capsys.readouterr().out


def test_search_granularity_command(capsys):
    assert main(["latency", "search", "laud_resnet50", "--hardware", "tx2", "--mode", "spatial",
                 "--density", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["stages"]) == 4 and result["latency_ms"] <= result["baseline_ms"] < result["static_ms"]
    assert main(["latency", "search", "laud_resnet50", "--hardware", "tx2", "--mode", "channel",
                 "--density", "0.5"]) == 0
    assert "faster than static" in capsys.readouterr().out


def test_latency_plot_writes_a_png(tmp_path, capsys):
    path = tmp_path / "plots" / "curve.png"
    assert main(["latency", "plot", "laud_resnet50", "--hardware", "tx2", "-o", str(path), "--points", "3"]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name != "curve.png"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["latency", "predict", "laud_resnet50", "--hardware", "gpu9000"], "unknown hardware 'gpu9000'"),
        (["latency", "predict", "laud_resnet50", "--mode", "spatial", "--density", "1.5"],
         "density must be a number in [0, 1]"),
        (["latency", "plot", "laud_resnet50", "-o", "x.png", "--modes", "static"], "modes: expected dynamic modes"),
    ],
)
def test_command_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_summary_from_another_resolution_is_a_warning(tmp_path, caplog):
    path = _summary(tmp_path / "summary.json", _resnet50_names(), input_size=[256, 256])
    with caplog.at_level("WARNING", logger="laudnet.latency"):
        predict("laud_resnet50", "tx2", stats=path)
    assert "measured at 256x256, predicting at 224x224" in caplog.text
