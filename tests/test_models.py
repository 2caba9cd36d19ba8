"""LAUD backbones against torchvision: equivalence, masks, MACs, geometry, gradients."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from laudnet import create_model, list_models
from laudnet.dynamic.geometry import expand_cells, input_mask
from laudnet.macs import count_macs
from laudnet.models.structure import model_shape

from helpers import randomize_, randomize_maskers_

TORCHVISION = {
    "laud_resnet50": "resnet50",
    "laud_resnet101": "resnet101",
    "laud_regnet_y_400mf": "regnet_y_400mf",
    "laud_regnet_y_800mf": "regnet_y_800mf",
    "laud_regnet_y_1_6gf": "regnet_y_1_6gf",
}
DYNAMIC_MODES = ("spatial", "channel", "layer", "both")
ODD_SIZE = (97, 131)


def _reference(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_(getattr(torchvision.models, TORCHVISION[name])(), seed).eval()


def _laud_like(reference: nn.Module, name: str, **kwargs) -> nn.Module:
    model = create_model(name, **kwargs)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(".masker_" in k for k in missing)
    return model.eval()


def test_registry_lists_the_five_models():
    assert set(TORCHVISION) <= set(list_models())
    assert list_models("laud_resnet*") == ["laud_resnet101", "laud_resnet50"]
    with pytest.raises(ValueError, match="unknown model 'laud_vgg'.*laud_resnet50"):
        create_model("laud_vgg")


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_static_and_forced_on_dynamic_models_equal_torchvision(name):
    reference = _reference(name)
    inputs = [torch.randn(2, 3, 224, 224), torch.randn(2, 3, *ODD_SIZE)]
    with torch.no_grad():
        expected = [reference(x) for x in inputs]
        for mode in ("static",) + DYNAMIC_MODES:
            model = randomize_maskers_(_laud_like(reference, name, mode=mode, spatial_granularity=2))
            model.set_forced_gates(True)
            for x, want in zip(inputs, expected):
                got = model(x)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=f"{name} {mode} {tuple(x.shape)}")


def _branchless_forward(model: nn.Module, x: torch.Tensor, channel_bias: bool) -> torch.Tensor:
    """The model with every residual branch removed (plus conv3's BN shift when only channels are off)."""
    x = model.forward_stem(x)
    for _, block in model.named_dynamic_blocks():
        layout = block.layout()
        shortcut = layout.projection[1](layout.projection[0](x)) if layout.projection is not None else x
        if channel_bias:
            bn = layout.c.norm
            shift = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shortcut = shortcut + shift[None, :, None, None]
        x = layout.out_act(shortcut)
    return model.forward_head(x)


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnet_y_400mf"])
@pytest.mark.parametrize("mode", DYNAMIC_MODES)
def test_masks_off_remove_residual_branches(name, mode):
    model = _laud_like(_reference(name), name, mode=mode, spatial_granularity=4)
    model.set_forced_gates(False)
    x = torch.randn(2, 3, *ODD_SIZE)
    with torch.no_grad():
        out = model(x, return_stats=True)
        # With every channel skipped, conv3 still sees zeros and BN3 adds its constant shift.
        expected = _branchless_forward(model, x, channel_bias=mode == "channel")
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-4)
    dynamic_blocks = [b for b in out.stats.blocks if b.dynamic]
    assert len(dynamic_blocks) == len(out.stats.blocks)
    for block in dynamic_blocks:
        if mode == "channel":
            assert torch.all(block.channel_density == 0)
        else:
            assert torch.all(block.conv3_density == 0) and torch.all(block.conv1_density == 0)


@pytest.mark.parametrize("name", list(TORCHVISION))
@pytest.mark.parametrize("size", [(224, 224), (197, 263)])
def test_dense_macs_equal_flop_counter(name, size):
    reference = getattr(torchvision.models, TORCHVISION[name])().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(torch.randn(1, 3, *size))
    flops = counter.get_total_flops()
    assert model_shape(reference, size).dense_macs * 2 == flops
    with torch.device("meta"):
        laud = create_model(name)
    assert count_macs(laud, size).dense_macs * 2 == flops


def test_resnet50_has_4_1_gmacs():
    with torch.device("meta"):
        model = create_model("laud_resnet50")
    assert count_macs(model, 224).dense_macs == pytest.approx(4.09e9, rel=1e-3)


@pytest.mark.parametrize("mode", DYNAMIC_MODES)
def test_dynamic_macs_move_with_density(mode):
    with torch.device("meta"):
        model = create_model("laud_resnet50", mode=mode, spatial_granularity=2, channel_granularity=4)
    ratios = [count_macs(model, 224, d).macs_ratio for d in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert ratios == sorted(ratios) and len(set(ratios)) == 5
    assert ratios[-1] > 1.0  # the maskers' own MACs count
    assert ratios[0] < 0.3


def test_forward_stats_match_the_macs_formula_when_all_off():
    model = create_model("laud_resnet50", mode="spatial", spatial_granularity=4).eval()
    model.set_forced_gates(False)
    with torch.no_grad():
        stats = model(torch.randn(2, 3, 224, 224), return_stats=True).stats
    expected = count_macs(model, 224, density=0.0).dynamic_macs
    assert stats.dynamic_macs.tolist() == pytest.approx([expected, expected], rel=1e-12)
    assert stats.dense_macs == count_macs(model, 224).dense_macs


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnet_y_400mf"])
def test_skipped_channels_are_exactly_zero(name):
    model = randomize_maskers_(_laud_like(_reference(name), name, mode="channel"), seed=3)
    captured = {}

    def keep(key):
        def hook(module, args):
            captured[key] = args[0].detach()
        return hook

    handles = []
    for block_name, block in model.named_dynamic_blocks():
        layout = block.layout()
        b, c = layout.b, layout.c
        handles.append(b.conv.register_forward_pre_hook(keep((block_name, "b"))))
        handles.append(c.conv.register_forward_pre_hook(keep((block_name, "c"))))
    with torch.no_grad():
        stats = model(torch.randn(2, 3, 128, 96), return_stats=True).stats
    for h in handles:
        h.remove()
    skipped_any = False
    for block, (block_name, module) in zip(stats.blocks, model.named_dynamic_blocks()):
        channel_on = block.channel_mask.repeat_interleave(module.spec.channel_granularity, dim=1).bool()
        for key in ("b", "c"):
            activation = captured[(block_name, key)]
            off = activation.permute(1, 0, 2, 3)[~channel_on.T]
            assert torch.all(off == 0), f"{block_name} {key}"
        skipped_any |= bool((~channel_on).any())
        assert 0 < block.channel_density.min() or not channel_on.any()
    assert skipped_any, "the random maskers should skip some channels"


def _windows_inside(out_mask: torch.Tensor, in_mask: torch.Tensor, stride: int) -> tuple[bool, torch.Tensor]:
    """Whether every active output's 3×3 window lies in ``in_mask``; also the set of positions read."""
    h, w = in_mask.shape
    read = torch.zeros_like(in_mask, dtype=torch.bool)
    ok = True
    for i, j in out_mask.nonzero().tolist():
        rows = [r for r in range(stride * i - 1, stride * i + 2) if 0 <= r < h]
        cols = [c for c in range(stride * j - 1, stride * j + 2) if 0 <= c < w]
        for r in rows:
            for c in cols:
                read[r, c] = True
                ok &= bool(in_mask[r, c])
    return ok, read


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("granularity", [1, 2, 4, 7])
@pytest.mark.parametrize("in_hw", [(14, 14), (13, 11)])
def test_conv1_mask_covers_exactly_what_conv2_reads(stride, granularity, in_hw, rng):
    out_hw = tuple((d - 1) // stride + 1 for d in in_hw)
    grid = tuple(-(-d // granularity) for d in out_hw)
    cells = (torch.rand(1, 1, *grid, generator=rng) < 0.4).float()
    conv3 = expand_cells(cells, granularity, out_hw)
    conv1 = input_mask(conv3, in_hw, kernel=3, stride=stride)
    if grid == (1, 1):  # a single cell stays a broadcastable (B, 1, 1, 1) gate
        assert conv3.shape[-2:] == conv1.shape[-2:] == (1, 1)
        conv3, conv1 = conv3.expand(1, 1, *out_hw), conv1.expand(1, 1, *in_hw)
    assert conv3.shape[-2:] == out_hw and conv1.shape[-2:] == in_hw
    inside, read = _windows_inside(conv3[0, 0].bool(), conv1[0, 0].bool(), stride)
    assert inside
    assert torch.equal(read, conv1[0, 0].bool())  # and nothing more is computed


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnet_y_400mf"])
def test_garbage_outside_conv1_mask_does_not_change_the_output(name):
    model = randomize_maskers_(randomize_(create_model(name, mode="spatial", spatial_granularity=2), 5), 5).eval()
    x = torch.randn(2, 3, 99, 77)
    with torch.no_grad():
        clean = model(x, return_stats=True)
    assert 0.05 < float(clean.stats.macs_ratio.mean()) < 0.95
    handles, masks = [], {}
    for _, block in model.named_dynamic_blocks():
        b = block.layout().b

        def corrupt(module, args, block=block):
            conv1_mask = masks[block.block_name].conv1.bool()
            return (torch.where(conv1_mask, args[0], torch.full_like(args[0], 1e3)),)

        def remember(module, args):
            masks[module.block_name] = module.compute_masks(args[0])

        handles.append(block.register_forward_pre_hook(remember))
        handles.append(b.conv.register_forward_pre_hook(corrupt))
    with torch.no_grad():
        corrupted = model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(corrupted, clean.logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnet_y_400mf"])
@pytest.mark.parametrize("mode", DYNAMIC_MODES)
def test_gradients_reach_every_masker_parameter(name, mode):
    kwargs = {"width_multiplier": 0.25} if name == "laud_resnet50" else {}
    model = create_model(name, mode=mode, spatial_granularity=2, num_classes=10, **kwargs).train()
    model.set_temperature(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    for _ in range(2):  # the first step moves the zero-initialised decision layers
        optimizer.zero_grad()
        out = model(x, return_stats=True)
        loss = nn.functional.cross_entropy(out.logits, y) + (out.stats.macs_ratio.mean() - 0.5) ** 2
        loss.backward()
        optimizer.step()
    masker_params = dict((n, p) for n, p in model.named_parameters() if ".masker_" in n)
    assert masker_params
    for n, p in masker_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("mode", DYNAMIC_MODES)
def test_any_input_size_gives_consistent_stats(mode):
    model = create_model("laud_resnet50", mode=mode, spatial_granularity=4, width_multiplier=0.25).eval()
    for size in [(33, 47), (64, 64), (427 // 4, 640 // 4)]:
        with torch.no_grad():
            out = model(torch.randn(3, 3, *size), return_stats=True)
        assert out.logits.shape == (3, 1000)
        assert len(out.stats.blocks) == 16
        for block in out.stats.blocks:
            for density in (block.conv1_density, block.conv2_density, block.conv3_density, block.channel_density):
                assert density.shape == (3,) and torch.all((density >= 0) & (density <= 1))


def test_temperature_must_be_positive():
    model = create_model("laud_resnet50", mode="layer", width_multiplier=0.25)
    with pytest.raises(ValueError, match="positive"):
        model.set_temperature(0.0)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("laud_resnet50", {"mode": "channel", "channel_granularity": 3}, "does not divide the width 64"),
        ("laud_regnet_y_400mf", {"mode": "channel", "channel_granularity": 4}, "split the conv groups of width 8"),
        ("laud_resnet50", {"mode": "fast"}, "accepted modes"),
        ("laud_resnet50", {"spatial_granularity": "4-4-2"}, "one value or 4 values"),
        ("laud_resnet50", {"channel_mask_placement": "middle"}, "after_act, before_bn"),
    ],
)
def test_invalid_configuration_is_a_clear_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with torch.device("meta"):
            create_model(name, **kwargs)


def test_timm_create_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("laud_resnet50", mode="layer", num_classes=7, width_multiplier=0.25)
    assert model.name == "laud_resnet50" and model.fc.out_features == 7
