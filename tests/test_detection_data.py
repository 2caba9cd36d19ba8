"""Detection data and COCO evaluation: a hand-made annotation file, the synthetic shapes, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from laudnet.detection import CocoDetection, SyntheticCocoShapes, SyntheticSettings, coco_metrics
from laudnet.detection.evaluation import to_coco_results

# Two images; categories with non-contiguous ids (as COCO's); boxes, a polygon, uncompressed and
# compressed RLE masks, and a crowd region.
CAT, DOG = 1, 3


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _tiny_coco(folder) -> tuple:
    images = [{"id": 7, "file_name": "a.png", "height": 40, "width": 50},
              {"id": 9, "file_name": "b.png", "height": 30, "width": 30}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": CAT, "bbox": [4, 5, 16, 20], "area": 320, "iscrowd": 0,
         "segmentation": [[4, 5, 20, 5, 20, 25, 4, 25]]},
        {"id": 2, "image_id": 7, "category_id": DOG, "bbox": [25, 10, 20, 12], "area": 240, "iscrowd": 0,
         "segmentation": _uncompressed_rle(_box_mask(40, 50, 25, 10, 45, 22))},
        {"id": 3, "image_id": 9, "category_id": CAT, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": _rle(_box_mask(30, 30, 2, 2, 12, 12))},
        {"id": 4, "image_id": 9, "category_id": CAT, "bbox": [15, 15, 12, 12], "area": 144, "iscrowd": 0,
         "segmentation": _rle(_box_mask(30, 30, 15, 15, 27, 27))},
        {"id": 5, "image_id": 9, "category_id": DOG, "bbox": [0, 20, 12, 10], "area": 120, "iscrowd": 1,
         "segmentation": _uncompressed_rle(_box_mask(30, 30, 0, 20, 12, 30))},
    ]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}]}
    (folder / "images").mkdir()
    for image in images:
        Image.fromarray(np.full((image["height"], image["width"], 3), 90, dtype=np.uint8)).save(folder / "images" / image["file_name"])
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path, folder / "images"


def _perfect_outputs(dataset: CocoDetection, drop: tuple[int, ...] = ()) -> list[dict]:
    """What a detector that finds the ground truth would return (annotation ids in ``drop`` missed)."""
    results = []
    for index, info in enumerate(dataset.images):
        kept = [a for a in dataset.annotations[info["id"]] if not a["iscrowd"]]
        _, target = dataset[index]
        keep = torch.tensor([a["id"] not in drop for a in kept], dtype=torch.bool)
        output = {"boxes": target["boxes"][keep], "labels": target["labels"][keep],
                  "scores": torch.ones(int(keep.sum())), "masks": target["masks"][keep][:, None].float()}
        results.extend(to_coco_results(output, info["id"], dataset.category_ids))
    return results


def test_coco_file_gives_torchvision_targets(tmp_path):
    path, images = _tiny_coco(tmp_path)
    data = CocoDetection(path, images, masks=True)
    assert (len(data), data.classes, data.num_classes, data.category_ids) == (2, ["cat", "dog"], 3, [CAT, DOG])
    image, target = data[0]
    assert image.shape == (3, 40, 50) and float(image.max()) <= 1.0
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 5.0, 20.0, 25.0], [25.0, 10.0, 45.0, 22.0]]))
    assert target["labels"].tolist() == [1, 2] and int(target["image_id"]) == 7
    assert target["masks"].shape == (2, 40, 50) and int(target["masks"][1].sum()) == 240
    assert abs(int(target["masks"][0].sum()) - 320) <= 40  # a rasterised polygon
    _, crowded = data[1]
    assert crowded["labels"].tolist() == [1, 1]  # the crowd region is no training target
    assert crowded["masks"].shape == (2, 30, 30)
    assert "masks" not in CocoDetection(path, images)[0][1]


def test_predictions_equal_to_the_ground_truth_score_one(tmp_path):
    data = CocoDetection(*_tiny_coco(tmp_path), masks=True)
    results = _perfect_outputs(data)
    # A detection on the crowd region is neither a hit nor a false positive.
    results.append({"image_id": 9, "category_id": DOG, "bbox": [0, 20, 12, 10], "score": 0.5,
                    "segmentation": _rle(_box_mask(30, 30, 0, 20, 12, 30))})
    for iou_type in ("bbox", "segm"):
        metrics = coco_metrics(data.coco(), results, iou_type)
        assert metrics.ap == pytest.approx(1.0) and metrics.ap50 == pytest.approx(1.0), iou_type


def test_a_missed_object_gives_the_known_map(tmp_path):
    """Missing one of the three cats leaves recall 2/3 at precision 1: the cat AP meets 67 of COCO's
    101 recall thresholds (0, 0.01, ..., 0.66), so AP = 67/101; the dog's is 1; mAP = (67/101 + 1) / 2."""
    data = CocoDetection(*_tiny_coco(tmp_path), masks=True)
    metrics = coco_metrics(data.coco(), _perfect_outputs(data, drop=(4,)), "bbox")
    assert metrics.ap == pytest.approx((67 / 101 + 1) / 2)
    assert coco_metrics(data.coco(), [], "bbox").ap == 0.0


def test_synthetic_shapes_are_deterministic_varied_and_consistent():
    settings = SyntheticSettings(num_classes=4, min_size=48, max_size=80, max_objects=4)
    data = SyntheticCocoShapes(40, settings, seed=1, split="val")
    again = SyntheticCocoShapes(40, settings, seed=1, split="val")
    assert data.dataset == again.dataset and np.array_equal(data.render(3), again.render(3))
    sizes = {(i["height"], i["width"]) for i in data.images}
    assert len(sizes) > 20 and all(48 <= h <= 80 and 48 <= w <= 80 for h, w in sizes)
    counts = [len(data.annotations[i["id"]]) for i in data.images]
    assert max(counts) >= 3 and min(counts) >= 1
    assert {a["category_id"] for a in data.dataset["annotations"]} == {1, 2, 3, 4}
    for index in range(10):
        image, target = data[index]
        array = data.render(index)
        assert image.shape == (3, *array.shape[:2])
        for box, mask in zip(target["boxes"].int().tolist(), target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == box
            colours = array[mask.numpy().astype(bool)].reshape(-1, 3)
            assert (colours == colours[0]).all()  # one object, one colour
    assert not np.array_equal(data.render(0), SyntheticCocoShapes(1, settings, seed=1, split="train").render(0))


def test_synthetic_shapes_export_as_a_coco_folder(tmp_path):
    data = SyntheticCocoShapes(6, SyntheticSettings(min_size=40, max_size=56, min_object=10, max_object=20),
                               train=False)
    path = data.export(tmp_path / "shapes")
    read = CocoDetection(path, tmp_path / "shapes" / "images", masks=True)
    assert read.classes == data.classes and read.dataset == json.loads(json.dumps(data.dataset))
    for index in range(len(data)):
        (image, target), (expected_image, expected) = read[index], data[index]
        assert torch.equal(image, expected_image)
        for key in expected:
            assert torch.equal(target[key], expected[key]), key


@pytest.mark.parametrize("setup, error, message", [
    ("missing_file", FileNotFoundError, "annotation file not found"),
    ("bad_json", ValueError, "is not valid JSON"),
    ("not_coco", ValueError, "is not in COCO format"),
    ("unknown_category", ValueError, "unknown category 42"),
    ("missing_image", FileNotFoundError, "1 of 2 images listed in .* are missing from .*: b.png"),
    ("missing_folder", FileNotFoundError, "image folder not found"),
])
def test_bad_coco_data_is_reported_clearly(tmp_path, setup, error, message):
    path, images = _tiny_coco(tmp_path)
    data = json.loads(path.read_text())
    if setup == "missing_file":
        path = tmp_path / "nope.json"
    elif setup == "bad_json":
        path.write_text('{"images": [')
    elif setup == "not_coco":
        path.write_text(json.dumps({"images": []}))
    elif setup == "unknown_category":
        data["annotations"][0]["category_id"] = 42
        path.write_text(json.dumps(data))
    elif setup == "missing_image":
        (images / "b.png").unlink()
    elif setup == "missing_folder":
        images = tmp_path / "elsewhere"
    with pytest.raises(error, match=message):
        CocoDetection(path, images)
