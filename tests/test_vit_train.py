"""A tiny LAUD-ViT trained by the shared trainer on the built-in data: its target, its checkpoint, its masks."""

from __future__ import annotations

import json

import pytest
import torch

from laudnet.classification import SyntheticShapes, TrainConfig, train
from laudnet.cli import main
from laudnet.latency import predict
from laudnet.models import model_from_checkpoint
from laudnet.viz.masks import save_checkpoint_masks
from laudnet.viz.tokens import computed_tokens, save_token_masks

TINY_VIT_RUN = dict(
    model="laud_deit_small",
    model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3, "mlp_ratio": 2},
    mode="token", data="synthetic", image_size=32, synthetic_classes=4, synthetic_object_size=12,
    synthetic_train_size=1536, synthetic_val_size=256, workers=0, pretrain_epochs=5, epochs=4, batch_size=64,
    optimizer="adamw", lr=0.002, weight_decay=0.05, warmup_epochs=0.3, target=0.6, device="cpu", log_every=50,
)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("vit") / "run"
    summary = train(TrainConfig.from_dict({**TINY_VIT_RUN, "output": str(output)}), progress=False)
    return output, summary


def test_tiny_vit_learns_and_meets_its_target(vit_run):
    output, summary = vit_run
    pretrained = json.loads((output / "pretrain" / "summary.json").read_text())
    print(f"top1 {summary['top1']:.3f} (static {pretrained['top1']:.3f}), MACs ratio {summary['macs_ratio']:.3f}")
    assert summary["top1"] > 0.5  # chance: 0.25
    assert abs(summary["macs_ratio"] - TINY_VIT_RUN["target"]) <= 0.05
    assert [b["name"] for b in summary["blocks"]] == [f"blocks.{i}" for i in range(4)]
    assert all(0.0 < b["conv2_density"] < 1.0 for b in summary["blocks"])  # token densities, learnt per block


def test_eval_and_latency_read_the_run(vit_run, capsys):
    output, summary = vit_run
    assert main(["eval", "--checkpoint", str(output / "last.pth"), "--json", "--device", "cpu", "--workers", "0"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == pytest.approx(summary["top1"]) and evaluated["macs_ratio"] == pytest.approx(
        summary["macs_ratio"])
    model = model_from_checkpoint(output / "last.pth")
    measured = predict(model, "tx2", stats=output / "summary.json", input_size=32)
    assert measured.spec.modes == ("spatial",) * 4
    assert [b.density.conv2 for b in measured.blocks] == pytest.approx([b["conv2_density"] for b in summary["blocks"]])


def test_token_masks_drawn_over_the_images(vit_run, tmp_path):
    output, _ = vit_run
    model = model_from_checkpoint(output / "last.pth").eval()
    data = SyntheticShapes(size=8, num_classes=4, image_size=32, object_size=12, seed=0, split="val")
    images = torch.stack([data[i][0] for i in range(8)])
    assert save_token_masks(model, images, tmp_path / "tokens.png", all_blocks=True) == 4
    assert (tmp_path / "tokens.png").stat().st_size > 1000
    with torch.no_grad():
        stats = model(images, return_stats=True).stats
    maps = computed_tokens(stats.blocks[1], (4, 4))
    assert maps.shape == (8, 4, 4) and torch.equal(maps, stats.blocks[1].spatial_mask[:, 0])
    blocks, drawn = save_checkpoint_masks(output / "last.pth", tmp_path / "masks.png", images=4)
    assert (blocks, drawn) == (4, 4)  # laudnet viz masks draws ViT token masks as they are
