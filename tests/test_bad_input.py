"""The bad-input sweep: input a user can get wrong is one clear line with exit code 2, or does what it says."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from laudnet.cli import main
from laudnet.detection import CocoDetection, build_detector
from laudnet.detection.data import annotations_to_target
from laudnet.io import save_torch

RUN = {"model": "laud_resnet50", "model_kwargs": {"width_multiplier": 0.125, "layers": [1, 1, 1, 1]},
       "mode": "spatial", "data": "synthetic", "image_size": 32, "synthetic_classes": 2, "synthetic_object_size": 8,
       "synthetic_train_size": 32, "synthetic_val_size": 16, "batch_size": 16, "epochs": 1, "workers": 0,
       "device": "cpu", "teacher": "none", "log_every": 100}


def options(**changes) -> list[str]:
    return [f"--{k.replace('_', '-')}={json.dumps(v)}" for k, v in {**RUN, **changes}.items()]


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "Warning" not in line and not line.startswith("  ")]
    assert len(err) == 1 and err[0].startswith(f"laudnet {command}: error: "), err
    return err[0][len(f"laudnet {command}: error: "):]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run (its last.pth) and a static one (as a pre-training writes it)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *options(output=str(root / "run")), "--no-progress"]) == 0
    assert main(["train", *options(output=str(root / "static"), mode="static"), "--no-progress"]) == 0
    return root


def test_zero_byte_checkpoints_in_every_command(tmp_path, capsys):
    empty = tmp_path / "last.pth"
    empty.write_bytes(b"")
    expected = f"cannot read checkpoint {empty}: the file is empty (0 bytes; was its writing interrupted?)"
    for command in (["eval"], ["viz", "masks"], ["detect", "eval"]):
        assert main([*command, "--checkpoint", str(empty)]) == 2
        assert one_line(capsys, " ".join(command)) == expected
    assert main(["detect", "predict", "x.png", "--checkpoint", str(empty)]) == 2
    assert one_line(capsys, "detect predict") == expected
    assert main(["train", *options(output=str(tmp_path)), "--resume", "--no-progress"]) == 2
    assert one_line(capsys, "train") == expected


def test_resume_refuses_another_run_and_fewer_epochs_and_cleans_its_temporaries(finished_run, tmp_path, capsys):
    run, static = finished_run / "run", finished_run / "static"
    stale = run / ".last.pth.abcd1234.tmp"
    stale.write_bytes(b"")
    summary = (run / "summary.json").read_text()
    assert main(["train", *options(output=str(run), mode="layer"), "--resume", "--no-progress"]) == 2
    message = one_line(capsys, "train")
    assert message.startswith(f"{run / 'last.pth'} was written by a run of laud_resnet50 "
                              "spatial-spatial-spatial-spatial S=1-1-1-1; this run builds laud_resnet50 layer-layer-layer-layer (mode: ")
    assert "--resume continues the same run; to start from its weights instead, pass --weights" in message
    assert not stale.exists(), "--resume removes the temporaries an interrupted write left"
    # A static pre-training's last.pth given to a dynamic run's --resume.
    assert main(["train", *options(output=str(static)), "--resume", "--no-progress"]) == 2
    assert ("was written by a run of laud_resnet50 static-static-static-static; this run builds laud_resnet50 "
            "spatial") in one_line(capsys, "train")
    # A finished 1-epoch run is not silently "resumed" to fewer epochs (summary.json untouched).
    save_torch({**torch.load(run / "last.pth", weights_only=True), "epoch": 3}, tmp_path / "last.pth")
    (tmp_path / "config.yaml").write_text("")
    assert main(["train", *options(output=str(tmp_path), epochs=2), "--resume", "--no-progress"]) == 2
    assert one_line(capsys, "train") == (f"{tmp_path / 'last.pth'} has already trained 3 epochs, more than epochs=2: "
                                         "pass --epochs 3 (or more) to resume it")
    assert (run / "summary.json").read_text() == summary


def test_model_arguments_are_checked_by_name_and_type(tmp_path, capsys):
    assert main(["train", *options(output=str(tmp_path / "a"), model_kwargs={"bogus": 1}), "--no-progress"]) == 2
    message = one_line(capsys, "train")
    assert message.startswith("laud_resnet50: unknown argument bogus; accepted: weights, progress, strict_spec, mode,")
    assert "width_multiplier" in message and "channel_mask_placement" in message
    assert main(["train", *options(output=str(tmp_path / "b"), model_kwargs={"width_multiplier": "wide"}),
                 "--no-progress"]) == 2
    assert one_line(capsys, "train") == "width_multiplier must be a positive number, got 'wide'"
    assert main(["train", *options(output=str(tmp_path / "c"), image_size=20000), "--no-progress"]) == 2
    assert one_line(capsys, "train") == ("image_size 20000 is too large: at most 4096 pixels per side (one 20000x20000 "
                                         "image would take 4.5 GiB as float32)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_eval_device_and_macs_values(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "any.pth"), "--device", "tpu"]) == 2
    assert one_line(capsys, "eval") == "device must be auto, cpu, cuda or cuda:N, got 'tpu'"
    assert main(["model", "macs", "laud_resnet50", "--mode", "spatial", "-S", "-2"]) == 2
    assert one_line(capsys, "model macs") == ("--spatial-granularity/-S: expected a positive integer or four "
                                              "dash-separated ones (4 or 4-4-2-1), got '-2'")
    # --density 0 is documented ([0, 1]) and means every gate off: only the static parts remain.
    assert main(["model", "macs", "laud_resnet50", "--mode", "layer", "--density", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["density"] == 0 and 0 < report["macs_ratio"] < 0.2


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width × height`` (its pixel data never needs decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _detector_checkpoint(path, classes: int) -> None:
    model = build_detector("retinanet", mode="spatial", num_classes=classes + 1, min_size=64, max_size=96,
                           fpn_channels=16, model_kwargs={"width_multiplier": 0.125, "layers": [1, 1, 1, 1]})
    torch.save({"model": model.state_dict(), "model_config": model.build_config,
                "config": {"detector": "retinanet", "data": "synthetic", "synthetic_classes": classes,
                           "synthetic_val_size": 4, "min_size": 64, "max_size": 96},
                "classes": [f"c{i}" for i in range(classes)]}, path)


def test_detection_checkpoints_against_their_data_and_images(tmp_path, capsys):
    checkpoint = tmp_path / "detector.pth"
    _detector_checkpoint(checkpoint, 3)
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 2
    assert one_line(capsys, "eval") == (f"{checkpoint} is a laudnet detection checkpoint (retinanet); evaluate it "
                                        f"with `laudnet detect eval --checkpoint {checkpoint}`")
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(folder / "images" / "a.png")
    (folder / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    assert main(["detect", "eval", "--checkpoint", str(checkpoint), "--data", str(folder), "--annotations", "val.json",
                 "--images", "images", "--workers", "0"]) == 2
    assert one_line(capsys, "detect eval") == (
        f"{checkpoint} was trained on 3 categories (c0, c1, c2); the validation data ({folder}) has 2 (cat, dog): "
        "evaluate on annotations with the same categories")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(20000, 20000))
    assert main(["detect", "predict", str(huge), "--checkpoint", str(checkpoint), "-o", str(tmp_path / "o.png")]) == 2
    assert one_line(capsys, "detect predict") == (
        f"{huge} is 20000x20000 (400 megapixels); detect predict reads images of at most 89.5 megapixels "
        "(about 9459x9459): downscale it")


@pytest.mark.parametrize("bbox, problem", [
    ([None, 1, 2, 3], "whose bbox [None, 1, 2, 3] is not four finite numbers [x, y, width, height]"),
    ([float("nan"), 1, 2, 3], "whose bbox [nan, 1, 2, 3] is not four finite numbers [x, y, width, height]"),
    (["a", 1, 2, 3], "whose bbox ['a', 1, 2, 3] is not four finite numbers [x, y, width, height]"),
    ([1, 1, -5, 3], "whose bbox [1, 1, -5, 3] has a negative width or height"),
    ([1, 2, 3], "whose bbox [1, 2, 3] is not [x, y, width, height]"),
])
def test_bad_boxes_name_the_annotation_and_the_file(tmp_path, bbox, problem):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.png", "height": 30, "width": 40}],
                                "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": bbox}],
                                "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(ValueError) as error:
        CocoDetection(path, tmp_path / "images")
    assert str(error.value) == f"annotation file {path} has annotation 3 (image 7) {problem}"


def test_boxes_outside_the_image_are_left_out_with_a_warning(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    path = tmp_path / "train.json"
    annotations = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [45, 5, 10, 10]},  # clamped to zero width
                   {"id": 2, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10]}]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": 30, "width": 40}], "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}]}
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"1 of 2 boxes lie outside their image or are under a pixel"):
        dataset = CocoDetection(path, tmp_path / "images", train=True)
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[5.0, 5.0, 15.0, 15.0]] or target["boxes"].tolist() == [[25.0, 5.0, 35.0, 15.0]]
    assert annotations_to_target(annotations, 7, 30, 40, {1: 1}, masks=False)["boxes"].shape == (1, 4)
    path.write_text(json.dumps({**data, "annotations": annotations[:1]}))
    with pytest.raises(ValueError, match="none of its 1 boxes is usable .* there is nothing to train on"):
        CocoDetection(path, tmp_path / "images", train=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_in_training_names_the_file(tmp_path, capsys, workers):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(2):
            folder = data / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (60 * i, 40 * c, 90)).save(folder / f"{i}.jpg", quality=95)
    broken = data / "train" / "c1" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    assert main(["train", *options(output=str(tmp_path / "out"), data=str(data), batch_size=4, workers=workers),
                 "--no-progress"]) == 2
    message = one_line(capsys, "train")
    assert message.startswith(f"cannot read image {broken}: ") and "truncated" in message
