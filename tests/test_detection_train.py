"""Detection training end to end: learning at a MACs target, eval / predict commands, resume,
recipes and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from laudnet.cli import main
from laudnet.detection import DetectionConfig, DetectionTrainer, SyntheticCocoShapes
from laudnet.detection.training import detector_from_config, train_detector
from laudnet.synthetic import SHAPES
from laudnet.io import load_checkpoint
from laudnet.training.distributed import init_distributed

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"
QUICK = CONFIGS / "synthetic_quick.yaml"


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    """The quick synthetic recipe, trained once; with the untrained model's evaluation."""
    output = tmp_path_factory.mktemp("detection") / "run"
    config = DetectionConfig.load(QUICK, {"output": str(output)})
    trainer = DetectionTrainer(config, init_distributed("cpu"), progress=False)
    untrained = trainer.evaluate()
    summary = trainer.fit()
    return output, config, untrained, summary


def test_short_training_beats_the_untrained_model_at_its_macs_target(detection_run):
    output, config, untrained, summary = detection_run
    trained = summary["bbox"]["ap"]
    print(f"bbox mAP: untrained {untrained.bbox.ap:.3f}, trained {trained:.3f} (AP50 {summary['bbox']['ap50']:.3f}); "
          f"backbone MACs ratio {summary['macs_ratio']:.3f} (target {config.target})")
    assert trained > 0.3 and trained > untrained.bbox.ap + 0.25
    assert abs(summary["macs_ratio"] - config.target) <= 0.05
    assert summary["segm"] is None and len(summary["blocks"]) == 8
    # The blocks do compute, on part of the image: the target is not met by skipping everything.
    densities = [b["conv3_density"] for b in summary["blocks"]]
    assert sum(0.05 < d < 0.95 for d in densities) >= 4, densities
    assert {s["stage"] for s in summary["stages"]} == {0, 1, 2, 3}
    for name in ("last.pth", "best.pth", "last.safetensors", "metrics.csv", "config.yaml", "summary.json", "tensorboard"):
        assert (output / name).exists(), name
    checkpoint = load_checkpoint(output / "last.pth")
    assert len(checkpoint["history"]) == config.epochs and checkpoint["classes"] == list(SHAPES[:3])
    assert "val_bbox_map" in (output / "metrics.csv").read_text().splitlines()[0]


def test_eval_command_reproduces_the_summary(detection_run, capsys):
    output, _, _, summary = detection_run
    assert main(["detect", "eval", "--checkpoint", str(output / "last.pth"), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bbox"]["ap"] == pytest.approx(summary["bbox"]["ap"])
    assert result["macs_ratio"] == pytest.approx(summary["macs_ratio"])
    assert result["images"] == summary["images"] == 64 and len(result["blocks"]) == 8
    assert result["runner"] == "sparse engine" and result["inference_ms"] > 0
    assert main(["detect", "eval", "--checkpoint", str(output / "last.pth"), "--device", "cpu", "--masked"]) == 0
    text = capsys.readouterr().out
    assert "bbox mAP" in text and "stage 4" in text and "ms per image, backbone on the masked model" in text
    assert f"bbox mAP {summary['bbox']['ap']:.4f}" in text


def test_predict_draws_boxes_labels_and_backbone_masks(detection_run, tmp_path, capsys):
    output, config, _, _ = detection_run
    image = tmp_path / "shapes.png"
    Image.fromarray(SyntheticCocoShapes(1, config.synthetic_settings(), seed=5, split="val").render(0)).save(image)
    drawing = tmp_path / "out.png"
    assert main(["detect", "predict", str(image), "--checkpoint", str(output / "best.pth"), "-o", str(drawing),
                 "--show-masks"]) == 0
    message = capsys.readouterr().out
    assert message.startswith(f"wrote {drawing}: ") and "backbone MACs ratio" in message
    assert int(message.split(": ")[1].split()[0]) >= 1  # at least one confident detection
    width, height = Image.open(drawing).size
    assert width > 3 * height  # the detections and one panel per stage
    # The masked backbone (for comparison) draws the same detections at the same MACs ratio.
    assert main(["detect", "predict", str(image), "--checkpoint", str(output / "best.pth"),
                 "-o", str(tmp_path / "masked.png"), "--masked"]) == 0
    assert capsys.readouterr().out.replace("masked.png", "out.png") == message


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Interrupted after the first epoch's checkpoint, a resumed run ends where a straight one does."""
    overrides = {"synthetic_train_size": 16, "synthetic_val_size": 8, "batch_size": 4, "epochs": 2,
                 "detector": "mask_rcnn"}
    straight = DetectionConfig.load(QUICK, {**overrides, "output": str(tmp_path / "straight")})
    broken = DetectionConfig.load(QUICK, {**overrides, "output": str(tmp_path / "broken")})
    train_detector(straight, progress=False)

    evaluate, calls = DetectionTrainer.evaluate, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(self)

    monkeypatch.setattr(DetectionTrainer, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_detector(broken, progress=False)
    monkeypatch.setattr(DetectionTrainer, "evaluate", evaluate)
    assert load_checkpoint(tmp_path / "broken" / "last.pth")["epoch"] == 1
    with pytest.raises(ValueError, match="pass --resume"):
        train_detector(broken, progress=False)
    summary = train_detector(broken, resume=True, progress=False)

    a, b = (load_checkpoint(tmp_path / name / "last.pth") for name in ("straight", "broken"))
    assert b["epoch"] == 2 and b["step"] == a["step"] and b["history"] == a["history"]
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-6, msg=key)
    assert summary["segm"] is not None


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "base.yaml"), ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds_its_detector(path):
    config = dataclasses.replace(DetectionConfig.load(path, None), weights=None)  # no ImageNet model here
    with torch.device("meta"):
        model = detector_from_config(config, num_classes=81)
    assert not model.backbone.body.dynamic_spec.is_static


def test_coco_recipes_follow_the_official_ones():
    retina = DetectionConfig.load(CONFIGS / "retinanet_r101_channel.yaml", None)
    assert (retina.detector, retina.model, retina.mode, retina.channel_granularity) == ("retinanet", "laud_resnet101", "channel", 2)
    assert (retina.target, retina.backbone_lr_mult, retina.backbone_weight_decay_mult) == (0.6, 0.2, 0.9)
    assert (retina.epochs, retina.batch_size, retina.lr, retina.weight_decay) == (12, 16, 0.02, 1e-4)
    assert (retina.lr_schedule, retina.lr_milestones, retina.trainable_layers, retina.frozen_bn) == ("step", [8, 11], 3, True)
    assert (retina.min_size, retina.max_size, retina.t0, retina.t_last) == (800, 1333, 0.1, 0.01)
    for name, mult in (("retinanet", 0.2), ("faster_rcnn", 0.5), ("mask_rcnn", 0.3)):
        layer = DetectionConfig.load(CONFIGS / f"{name}_r101_layer.yaml", None)
        assert (layer.mode, layer.target, layer.backbone_lr_mult) == ("layer", 0.5, mult)


# -- bad input ----------------------------------------------------------------------------------

def _coco_root(root: Path, problem: str) -> list[str]:
    """A small COCO-format data set with ``problem``; returns the options that point training at it."""
    data = SyntheticCocoShapes(2, DetectionConfig().synthetic_settings(), train=False)
    options = [f"--data={root}"]
    for split in ("train", "val"):
        data.export(root / split)
        options += [f"--{split}-annotations={split}/annotations.json", f"--{split}-images={split}/images"]
    if problem == "missing_image":
        (root / "train" / "images" / "000001.png").unlink()
    elif problem == "bad_json":
        (root / "val" / "annotations.json").write_text("{not json")
    return options


@pytest.mark.parametrize("args, problem, message", [
    (["--data", "{root}/nowhere"], None, "annotation file not found: "),
    ([], "missing_image", "1 of 2 images listed in"),
    ([], "bad_json", "is not valid JSON"),
    (["--detector", "yolo"], None, "detector must be one of retinanet, faster_rcnn, mask_rcnn, got 'yolo'"),
    (["--model", "laud_regnet_y_400mf"], None, "model must be one of laud_resnet50, laud_resnet101"),
    (["--lr-milestones", "[2, 9]"], None, "lr_milestones must be a list of epochs"),
])
def test_bad_training_input_is_one_clear_line(tmp_path, capsys, args, problem, message):
    if problem is not None:
        args = _coco_root(tmp_path / "coco", problem)
    output = tmp_path / "out"
    code = main(["detect", "train", "--config", str(QUICK), f"--output={output}", "--no-progress",
                 *[a.format(root=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("laudnet detect train: error: ") and message in err[0], err
    assert not output.exists()


def test_bad_eval_and_predict_input(detection_run, tmp_path, capsys):
    classification = tmp_path / "classifier.pth"
    torch.save({"model": {}, "model_config": {"name": "laud_resnet50", "kwargs": {}}}, classification)
    assert main(["detect", "eval", "--checkpoint", str(classification)]) == 2
    assert "is not a laudnet detection checkpoint (it holds a laud_resnet50 model: `laudnet eval --checkpoint" in capsys.readouterr().err
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["detect", "predict", str(tmp_path / "none.png"), "--checkpoint", str(classification)]) == 2
    assert "not a laudnet detection checkpoint" in capsys.readouterr().err
    trained = str(detection_run[0] / "last.pth")
    assert main(["detect", "predict", str(tmp_path / "none.png"), "--checkpoint", trained, "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
