"""`laudnet models` and `laudnet macs` through the command-line entry point."""

from __future__ import annotations

import json

from laudnet.cli import main


def test_models_lists_every_model(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert {"laud_resnet50", "laud_resnet101", "laud_regnet_y_400mf"} <= set(names)
    resnet50 = next(r for r in rows if r["name"] == "laud_resnet50")
    assert abs(resnet50["gmacs_224"] - 4.089) < 1e-3


def test_macs_json_has_totals_and_stages(capsys):
    assert main(["macs", "laud_resnet50", "--mode", "spatial-spatial-spatial-static", "-S", "4-4-2-1",
                 "--density", "0.5", "--input", "427x640", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [427, 640]
    assert len(report["stages"]) == 4 and report["stages"][3]["mode"] == "static"
    assert report["dynamic_macs"] < report["dense_macs"]
    assert abs(sum(s["dense_macs"] for s in report["stages"]) - report["dense_macs"]) < 0.2 * report["dense_macs"]
    assert 0.5 < report["macs_ratio"] < 0.8


def test_macs_table(capsys):
    assert main(["macs", "laud_regnet_y_400mf", "--mode", "channel"]) == 0
    out = capsys.readouterr().out
    assert "G=8-8-8-8" in out and "total" in out


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    assert main(["macs", "laud_resnet50", "--mode", "sparse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["laudnet macs: error: mode: unknown mode 'sparse'; accepted modes are static, spatial, channel, layer, both"]
    assert main(["macs", "laud_resnet50", "--input", "12xfoo"]) == 2
    assert "input size" in capsys.readouterr().err
    assert main(["macs", "laud_resnet50", "--density", "1.5"]) == 2
    assert "density must be in [0, 1]" in capsys.readouterr().err
