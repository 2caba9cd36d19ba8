"""`laudnet model list|macs` through the command-line entry point; the CLI's error handling and old names."""

from __future__ import annotations

import json

import pytest

from laudnet import _deprecation, cli
from laudnet.cli import main


def test_models_lists_every_model(capsys):
    assert main(["model", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert {"laud_resnet50", "laud_resnet101", "laud_regnet_y_400mf"} <= set(names)
    resnet50 = next(r for r in rows if r["name"] == "laud_resnet50")
    assert abs(resnet50["gmacs_224"] - 4.089) < 1e-3


def test_macs_json_has_totals_and_stages(capsys):
    assert main(["model", "macs", "laud_resnet50", "--mode", "spatial-spatial-spatial-static", "-S", "4-4-2-1",
                 "--density", "0.5", "--input", "427x640", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [427, 640]
    assert len(report["stages"]) == 4 and report["stages"][3]["mode"] == "static"
    assert report["dynamic_macs"] < report["dense_macs"]
    assert abs(sum(s["dense_macs"] for s in report["stages"]) - report["dense_macs"]) < 0.2 * report["dense_macs"]
    assert 0.5 < report["macs_ratio"] < 0.8


def test_macs_table(capsys):
    assert main(["model", "macs", "laud_regnet_y_400mf", "--mode", "channel"]) == 0
    out = capsys.readouterr().out
    assert "G=8-8-8-8" in out and "total" in out


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    assert main(["model", "macs", "laud_resnet50", "--mode", "sparse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["laudnet model macs: error: mode: unknown mode 'sparse'; accepted modes are static, spatial, channel, "
                   "layer, both (or token / head, and for ViTs spatial+layer, channel+layer, spatial+channel+layer)"]
    assert main(["model", "macs", "laud_resnet50", "--input", "12xfoo"]) == 2
    assert "input size" in capsys.readouterr().err
    assert main(["model", "macs", "laud_resnet50", "--density", "1.5"]) == 2
    assert "density must be in [0, 1]" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(monkeypatch):
    """A bug is not disguised as a user error: only UsageError becomes one line and exit code 2."""
    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(cli.model, "count_macs", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["model", "macs", "laud_resnet50"])


@pytest.mark.parametrize("old, new", [
    (["macs", "laud_resnet50", "--json"], ["model", "macs", "laud_resnet50", "--json"]),
    (["latency", "laud_resnet50", "--hardware", "tx2", "--mode", "layer", "--density", "0.5", "--json"],
     ["latency", "predict", "laud_resnet50", "--hardware", "tx2", "--mode", "layer", "--density", "0.5", "--json"]),
])
def test_old_command_names_still_work_with_a_warning(old, new, capsys, monkeypatch):
    monkeypatch.setattr(_deprecation, "_WARNED", set())  # warnings are once per process
    assert main(new) == 0
    expected = capsys.readouterr().out
    with pytest.warns(FutureWarning, match=f"use `laudnet {' '.join(new[:2])}`"):
        assert main(old) == 0
    assert capsys.readouterr().out == expected
