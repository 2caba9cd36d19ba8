"""The built-in synthetic data set and ImageNet-layout folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from laudnet.classification.data import SyntheticShapes, image_folder
from laudnet.synthetic import SHAPES


def test_synthetic_images_are_deterministic_and_split_apart():
    a = SyntheticShapes(size=32, seed=3)
    b = SyntheticShapes(size=32, seed=3)
    assert np.array_equal(a.render(5), b.render(5))
    assert not np.array_equal(a.render(5), SyntheticShapes(size=32, seed=3, split="val").render(5))
    assert not np.array_equal(a.render(5), SyntheticShapes(size=32, seed=4).render(5))
    image, label = a[5]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label == 5 % 6


def test_classes_are_balanced_and_named():
    data = SyntheticShapes(size=60, num_classes=6)
    counts = np.bincount([data.label(i) for i in range(len(data))])
    assert counts.tolist() == [10] * 6
    assert data.classes == list(SHAPES[:6])


def test_the_object_is_drawn_inside_its_box():
    data = SyntheticShapes(size=20, clutter=0, object_size=12)
    for index in range(20):
        image = data.render(index).astype(np.float32)
        box = data.object_box(index)
        inside = np.zeros(image.shape[:2], dtype=bool)
        inside[box.top:box.bottom, box.left:box.right] = True
        background = np.median(image[~inside], axis=0)
        changed = np.abs(image - background).max(axis=2) > 60
        assert changed[inside].sum() >= 10, index
        assert changed[~inside].mean() < 0.03, index  # only background noise outside


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes must be between 2 and 8"),
    ({"object_size": 64}, "object_size"),
    ({"split": "test"}, "split must be"),
])
def test_synthetic_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)


def test_image_folder_reads_imagenet_layout(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    data = image_folder(tmp_path, "train", image_size=32)
    image, label = data[3]
    assert data.classes == ["cat", "dog"] and image.shape == (3, 32, 32) and label == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*/train and .*/val"):
        image_folder(tmp_path / "nowhere", "train", 32)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        image_folder(tmp_path, "train", 32)
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        image_folder(tmp_path, "train", 32)
