"""`laudnet sparse bench`, and a checkpoint trained by `laudnet train` run through the engine."""

from __future__ import annotations

import json

import torch

from laudnet import create_model
from laudnet.cli import main
from laudnet.io import save_torch
from laudnet.models import checkpoint_metadata, model_from_checkpoint
from laudnet.sparse import convert
from laudnet.classification import SyntheticShapes

from helpers import TINY_RUN

QUICK = ["--input", "64x48", "--calls", "1", "--blocks", "1", "--warmup", "0", "--calibration-images", "2"]


def test_bench_sparse_json_has_the_latencies_and_the_realised_ratio(capsys):
    assert main(["sparse", "bench", "laud_resnet50", "--mode", "spatial", "-S", "2", "--density", "0.5", *QUICK,
                 "--masked", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["static"]) == {"eager", "eager_channels_last", "onnxruntime", "openvino"}
    assert set(result["engine"]) == {"onnxruntime", "torch"}
    for key in ("engine_ms", "masked_ms", "static_ms"):
        assert result[key] > 0
    assert result["static_ms"] == min(result["static"].values()) and result["threads"] == 1
    assert 0.2 < result["macs_ratio"] < 0.9
    assert result["static_model"] == "torchvision resnet50" and result["input_hw"] == [64, 48]
    assert result["engine_vs_static"] == result["engine_ms"] / result["static_ms"]
    assert result["efficiency"] == result["engine_vs_static"] / result["macs_ratio"]


def test_bench_sparse_from_a_checkpoint_of_a_reduced_model(tmp_path, capsys):
    model = create_model("laud_resnet50", mode="channel", channel_granularity=2, width_multiplier=0.25,
                         layers=[1, 1, 1, 1], num_classes=5)
    path = tmp_path / "small.pth"
    save_torch({"model_config": checkpoint_metadata(model), "model": model.state_dict()}, path)
    assert main(["sparse", "bench", "--checkpoint", str(path), "--density", "0.4", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "sparse engine, onnxruntime" in out and "static, openvino" in out
    assert "MACs ratio realised" in out


def test_bench_sparse_usage_errors(tmp_path, capsys):
    assert main(["sparse", "bench", "--density", "0.5"]) == 2
    assert "give either a model name or --checkpoint" in capsys.readouterr().err
    assert main(["sparse", "bench", "laud_resnet50", "--density", "0.5"]) == 2
    assert "--mode is required" in capsys.readouterr().err
    assert main(["sparse", "bench", "--checkpoint", str(tmp_path / "missing.pth"), "--mode", "layer"]) == 2
    assert "a --checkpoint brings its own" in capsys.readouterr().err
    assert main(["sparse", "bench", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["sparse", "bench", "laud_resnet50", "--mode", "layer", "--input", "20000x20000"]) == 2
    assert "GiB of input; the limit is" in capsys.readouterr().err
    assert main(["sparse", "bench", "laud_resnet50", "--mode", "layer", "--threads", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_trained_checkpoint_converts_to_the_same_accuracy(trained_run):
    """The shared short `laudnet train` run (quickstart recipe, smaller): engine and masked model agree."""
    output, summary = trained_run
    model = model_from_checkpoint(output / "last.pth").eval()
    engine = convert(model, backend="torch")
    data = SyntheticShapes(size=TINY_RUN["synthetic_val_size"], num_classes=TINY_RUN["synthetic_classes"],
                           image_size=TINY_RUN["image_size"], object_size=TINY_RUN["synthetic_object_size"],
                           seed=0, split="val")
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([int(data[i][1]) for i in range(len(data))])
    with torch.no_grad():
        masked = model(images, return_stats=True)
        sparse = engine(images)
    assert 0.05 < float(masked.stats.macs_ratio.mean()) < 0.95  # trained masks really skip work
    torch.testing.assert_close(sparse, masked.logits, rtol=0, atol=1e-4 * float(masked.logits.abs().max()))
    masked_top1 = float((masked.logits.argmax(1) == labels).float().mean())
    assert float((sparse.argmax(1) == labels).float().mean()) == masked_top1
    assert masked_top1 > 0.5
