"""Detectors on the sparse engine: the masked detector's features and detections, less backbone work."""

from __future__ import annotations

import pytest
import torch

from helpers import randomize_, randomize_maskers_
from laudnet.cli import main
from laudnet.detection import DETECTORS, build_detector, laud_backbone
from laudnet.detection.benchmark import StaticStages, compare_detector_latency
from laudnet.errors import UsageError
from laudnet.sparse import convert, set_gate_density
from laudnet.sparse.benchmark import static_reference

TINY = dict(model_kwargs={"width_multiplier": 0.25, "layers": [1, 1, 2, 1]}, num_classes=3, fpn_channels=32,
            representation_size=64, mask_head_channels=16, anchor_size=8, min_size=61, max_size=200)
# Keep every detection of the untrained heads, so there are boxes to compare.
KEEP_ALL = {"retinanet": {"score_thresh": 0.0}, "faster_rcnn": {"box_score_thresh": 0.0},
            "mask_rcnn": {"box_score_thresh": 0.0}}
MODES = {"spatial": {"spatial_granularity": "4-4-2-1"}, "channel": {"channel_granularity": 2}, "layer": {}}


def _detector(kind: str, mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_detector(kind, mode=mode, frozen_bn=False, **MODES[mode], **TINY, **KEEP_ALL[kind])
    body = laud_backbone(model).body
    randomize_maskers_(randomize_(body), bias=1.0)
    model.eval()
    images = [torch.rand(3, 61, 83, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    batch = model.transform(images)[0].tensors
    set_gate_density(body, 0.5, batch)
    return model


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(3, 61, 83, generator=g), torch.rand(3, 77, 59, generator=g)]  # a mixed, padded batch


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", DETECTORS)
def test_the_engine_detector_equals_the_masked_detector(kind, mode):
    model = _detector(kind, mode)
    engine = convert(model)
    images = _images()
    with torch.no_grad():
        pyramid = laud_backbone(model)(model.transform(images)[0].tensors)
        want = model(images)
        masked_stats = laud_backbone(model).last_stats
        engine_pyramid = laud_backbone(engine)(engine.transform(images)[0].tensors)
        got = engine(images)
        engine_stats = laud_backbone(engine).last_stats
    for level in pyramid:
        torch.testing.assert_close(engine_pyramid[level], pyramid[level], rtol=1e-4, atol=1e-4)
    assert 0.05 < float(masked_stats.macs_ratio.mean()) < 0.95
    torch.testing.assert_close(engine_stats.dynamic_macs, masked_stats.dynamic_macs)
    for a, b in zip(got, want):
        _same_detections(a, b)
    assert laud_backbone(model).engine is None  # the original detector is unchanged


def _same_detections(a: dict, b: dict, top: int = 30) -> None:
    """Each of the first ``top`` detections of one side is a detection of the other: label, score, box, mask.

    The untrained heads score many boxes alike, so near ties may swap places (or cross the ``top``
    boundary): a detection is looked for among all of the other side's, not at its own position.
    """
    assert a.keys() == b.keys() and len(a["boxes"]) >= top and len(b["boxes"]) >= top
    for one, other in ((a, b), (b, a)):
        for i in range(top):
            same = ((other["labels"] == one["labels"][i]) & ((other["scores"] - one["scores"][i]).abs() < 1e-4)
                    & ((other["boxes"] - one["boxes"][i]).abs().amax(dim=1) < 1e-2))
            assert bool(same.any()), f"detection {i} ({one['labels'][i]}, {one['scores'][i]:.5f}) has no match"
            if "masks" in one:
                j = int(same.nonzero()[0])
                torch.testing.assert_close(one["masks"][i], other["masks"][j], rtol=1e-3, atol=1e-3)


def test_onnxruntime_backbone_equals_the_masked_backbone():
    model = _detector("retinanet", "spatial")
    engine = convert(model, backend="onnxruntime")
    images = _images()
    with torch.no_grad():
        want, got = model(images), engine(images)
    for a, b in zip(got, want):
        _same_detections(a, b)
    assert laud_backbone(engine).last_stats is None  # the graph keeps its masks


def test_a_backbone_that_cannot_skip_is_one_clear_error():
    tiny = dict(TINY, model_kwargs={**TINY["model_kwargs"], "channel_mask_placement": "before_bn"})
    model = build_detector("faster_rcnn", mode="channel", frozen_bn=False, **tiny)
    with pytest.raises(UsageError, match="masks before BN"):
        convert(model)
    with pytest.raises(UsageError, match="torch or onnxruntime backend"):
        convert(build_detector("retinanet", **TINY), backend="triton")


def test_detector_latency_comparison_times_both_backbones_and_both_detectors():
    model = _detector("faster_rcnn", "spatial")
    result = compare_detector_latency(model, _images(), runtimes=("eager", "onnxruntime"), backends=("onnxruntime",),
                                      backbone_timing=(1, 1), detector_timing=(1, 1), warmup=0)
    assert set(result.backbone_static) == {"eager", "onnxruntime"} and set(result.backbone_engine) == {"onnxruntime"}
    assert result.static_model == "laud_resnet50 static"  # the reduced ResNet has no torchvision twin
    assert result.input_hw == (96, 96) and result.batch == 2  # the two images padded to multiples of 32
    assert 0.05 < result.macs_ratio < 0.95
    assert result.detector_static > 0 and result.detector_engine["onnxruntime"] > 0
    assert result.backbone_efficiency() > 0
    assert laud_backbone(model).engine is None


def test_static_stages_are_the_masked_backbone_with_every_gate_on():
    model = _detector("retinanet", "layer")
    body = laud_backbone(model).body
    static, _ = static_reference(body)
    x = torch.rand(2, 3, 64, 96)
    body.set_forced_gates(True)
    with torch.no_grad():
        want = body.forward_features(x).features
        for got, expected in zip(StaticStages(static)(x), want):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["laud_resnet50", "--detector", "retinanet", "--mode", "spatial", "--masked"], "--masked times a classifier"),
    (["laud_regnet_y_400mf", "--detector", "retinanet", "--mode", "spatial"], "unknown backbone"),
    (["laud_resnet50", "--detector", "yolo", "--mode", "spatial"], "invalid choice: 'yolo'"),
])
def test_detector_bench_bad_input_is_one_line(argv, message, capsys):
    assert main(["sparse", "bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
