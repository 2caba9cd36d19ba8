"""LAUD-ViT: timm's DeiT with every gate on, what skipping means, specs, shapes and MACs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from laudnet.dynamic.spec import DynamicSpec
from laudnet.errors import UsageError
from laudnet.macs import count_macs
from laudnet.models import create_model, model_from_checkpoint, model_shape
from laudnet.models.registry import create_meta_model

from helpers import randomize_maskers_

MODES = ("static", "spatial", "channel", "layer", "both", "spatial+layer", "channel+layer", "spatial+channel+layer")
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, num_classes=10)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _twin(arch: str, name: str, mode: str, **kwargs):
    """timm's model (seeded init) and the LAUD model of ``mode`` with its weights."""
    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False, **kwargs).eval()
    model = create_model(name, mode=mode, **kwargs).eval()
    missing = set(model.state_dict()) - set(reference.state_dict())
    assert set(reference.state_dict()) <= set(model.state_dict())
    assert all(".masker_" in key for key in missing)
    model.load_state_dict(reference.state_dict(), strict=False)
    return reference, model


@pytest.mark.parametrize("mode", MODES)
def test_deit_small_with_every_gate_on_is_timms(mode):
    # DeiT-S's widths, heads and depth on a 2x2 patch grid (a 224 image costs time, not coverage).
    reference, model = _twin("deit_small_patch16_224", "laud_deit_small", mode, img_size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images, return_stats=True)
        assert _relative(out.logits, reference(images)) <= 1e-5
    assert out.stats.dense_macs == model_shape(model, 32).dense_macs
    if mode != "static":
        assert all(b.dynamic for b in out.stats.blocks)
        assert float(out.stats.macs_ratio.min()) >= 1.0  # every gate on: all the work plus the maskers


@pytest.mark.parametrize("mode", ["static", "spatial+channel+layer"])
def test_deit_base_with_every_gate_on_is_timms(mode):
    reference, model = _twin("deit_base_patch16_224", "laud_deit_base", mode, img_size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _relative(model(images), reference(images)) <= 1e-5


def test_timm_checkpoint_file_loads_as_weights(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("deit_small_patch16_224", pretrained=False, **TINY).eval()
    path = tmp_path / "deit.pth"
    torch.save({"model": reference.state_dict()}, path)  # DeiT's release format
    model = create_model("laud_deit_small", mode="spatial", weights=str(path), **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _relative(model(images), reference(images)) <= 1e-5
    with pytest.raises(UsageError, match="not found"):
        create_model("laud_deit_small", weights=str(tmp_path / "missing.pth"), **TINY)


def _block_io(model, images):
    """Each block's input, output and masks."""
    records = []
    hooks = [block.register_forward_hook(lambda m, args, out: records.append((args[0], out, m.compute_masks(args[0]))))
             for block in model.blocks]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return records


def test_skipped_tokens_pass_through_exactly_and_the_class_token_computes():
    torch.manual_seed(0)
    model = randomize_maskers_(create_model("laud_deit_small", mode="spatial", **TINY), bias=0.5).eval()
    records = _block_io(model, torch.randn(4, 3, 32, 32))
    skipped = 0
    for block_in, block_out, masks in records:
        keep = masks.tokens > 0
        assert bool(keep[:, 0].all())
        assert torch.equal(block_out[~keep], block_in[~keep])
        assert not torch.equal(block_out[keep], block_in[keep])
        skipped += int((~keep).sum())
    assert skipped > 0


def test_skipped_head_and_sub_block_are_left_out():
    """A head off in every sample is a proj without that head's columns; an attention gate off leaves the MLP."""
    torch.manual_seed(0)
    reference = timm.create_model("deit_small_patch16_224", pretrained=False, **TINY).eval()
    model = create_model("laud_deit_small", mode="channel+layer", **TINY).eval()
    model.load_state_dict(reference.state_dict(), strict=False)
    block, timm_block = model.blocks[0], reference.blocks[0]
    with torch.no_grad():
        block.masker_head.linear.bias[0] = -10.0  # head 0: compute logit below skip
        x = torch.randn(3, 17, 48)
        head = slice(0, 12)
        timm_block.attn.proj.weight[:, head] = 0
        assert _relative(block(x), timm_block(x)) <= 1e-5
        block.masker_layer.linear.bias[0] = -10.0  # attention gate off
        assert _relative(block(x), x + timm_block.mlp(timm_block.norm2(x))) <= 1e-5
    stats = block.last_stats
    assert torch.allclose(stats.channel_density, torch.full((3,), 0.75, dtype=torch.float64))
    assert torch.equal(stats.conv1_density, torch.zeros(3, dtype=torch.float64))  # attention computed no token
    assert torch.equal(stats.conv3_density, torch.ones(3, dtype=torch.float64))


def test_static_macs_are_the_flop_counters_half():
    """Attention's two products count (quadratic in tokens); timm's math attention lets the counter see them."""
    with torch.device("meta"):
        reference = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    for block in reference.blocks:
        block.attn.fused_attn = False  # the counter does not see the CPU's fused attention kernel
    with FlopCounterMode(display=False) as counter:
        reference(torch.empty(1, 3, 224, 224, device="meta"))
    assert counter.get_total_flops() // 2 == model_shape(reference, 224).dense_macs
    assert model_shape("laud_deit_small", 224).dense_macs == 4_598_882_304
    shape = model_shape("laud_deit_small", 224)
    assert [b.stage for b in shape.blocks] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert shape.blocks[0].tokens == 197 and shape.stem[0].out_hw == (14, 14)


def test_dynamic_macs_count_attention_quadratically():
    spatial = count_macs(create_meta_model("laud_deit_small", mode="token"), 224, density=0.5)
    layer = count_macs(create_meta_model("laud_deit_small", mode="layer"), 224, density=0.5)
    # Half the tokens: linear layers halve, attention's products quarter -> below half; masker extra.
    assert 0.45 < spatial.macs_ratio < 0.5 < layer.macs_ratio < 0.52
    block = model_shape(create_meta_model("laud_deit_small", mode="spatial"), 224).blocks[0]
    n, c = 98.5, 384
    expected = 4 * n * c * c + 2 * n * n * c + 2 * n * c * 1536 + 196 * c * 2
    assert block.dynamic_macs(block.uniform(0.5)) == pytest.approx(expected)


def test_specs_aliases_combinations_and_per_group_modes():
    assert create_meta_model("laud_deit_small", mode="token-head").dynamic_spec.modes == ("both",) * 4
    combined = create_meta_model("laud_deit_small", mode="spatial-channel-layer").dynamic_spec
    assert combined.modes == ("spatial+channel+layer",) * 4
    groups = create_meta_model("laud_deit_small", mode="token-head-layer-static")
    assert [b.spec.mode for b in groups.blocks] == ["spatial"] * 3 + ["channel"] * 3 + ["layer"] * 3 + ["static"] * 3
    assert DynamicSpec.build(**combined.to_dict()) == combined
    with pytest.raises(UsageError, match="does not implement mode spatial\\+layer"):
        create_meta_model("laud_resnet50", mode="spatial+layer")
    with pytest.raises(UsageError, match="one value or 4 values"):
        DynamicSpec.build("spatial-channel")  # CNN specs keep their meaning
    with pytest.raises(UsageError, match="one token at a time"):
        create_meta_model("laud_deit_small", mode="spatial", spatial_granularity=2)
    with pytest.raises(UsageError, match="divide the 6 heads"):
        create_meta_model("laud_deit_small", mode="channel", channel_granularity=4)
    with pytest.raises(UsageError, match="takes 32x32 images"):
        create_model("laud_deit_small", **TINY)(torch.zeros(1, 3, 48, 48))


def test_checkpoint_rebuilds_the_model(tmp_path):
    from laudnet.models import checkpoint_metadata

    torch.manual_seed(0)
    model = randomize_maskers_(create_model("laud_deit_small", mode="spatial-channel-layer", **TINY)).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "model_config": checkpoint_metadata(model)}, path)
    rebuilt = model_from_checkpoint(path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
