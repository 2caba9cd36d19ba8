"""Mask overlays and `laudnet show-masks`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from laudnet.cli import main
from laudnet.viz import mask_overlay


def test_overlay_darkens_only_skipped_cells():
    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    cells = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    shaded = mask_overlay(image, cells, alpha=0.5)
    assert (shaded[:4, :4] == 200).all() and (shaded[4:, 4:] == 200).all()
    assert (shaded[:4, 4:] == 100).all() and (shaded[4:, :4] == 100).all()


def test_show_masks_writes_a_png(trained_run, tmp_path, capsys):
    output, _ = trained_run
    path = tmp_path / "masks.png"
    assert main(["viz", "masks", "--checkpoint", str(output / "last.pth"), "--images", "3", "-o", str(path)]) == 0
    assert "4 blocks x 3 images" in capsys.readouterr().out
    assert Image.open(path).size[0] > 100


def test_show_masks_needs_spatial_dynamics(trained_run, tmp_path, capsys):
    output, _ = trained_run
    static = output / "pretrain" / "last.pth"
    assert main(["viz", "masks", "--checkpoint", str(static), "-o", str(tmp_path / "x.png")]) == 2
    assert "no spatial or layer dynamics" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
