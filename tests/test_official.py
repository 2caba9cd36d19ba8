"""Official LAUDNet checkpoints: rebuilt from their own hyper_set, with the official logits and MACs.

The fixtures are official-format checkpoints built here: the official key layout (RegNet maskers
under ``….f.masker_*``, MLP channel maskers under ``masker_channel.conv``), a ``hyper_set`` that is
``str(argparse.Namespace)`` of the official parser, and ``state_dict`` / ``model`` entries as the
official ``train/main.py`` saves them. The expected logits come from the official forward pass
written out below from its description (no official code is used).
"""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from laudnet import create_model
from laudnet.cli import main
from laudnet.errors import CheckpointError, CheckpointWarning
from laudnet.macs import count_macs
from laudnet.models import convert_official_state_dict, from_official, model_from_checkpoint
from laudnet.models.official import parse_hyper_set
from laudnet.models.registry import create_meta_model
from laudnet.models.structure import model_shape

from helpers import randomize_

SIZE = 64  # the fixtures' IMAGE_SIZE: the official spatial masks are sized for it


def hyper_set(arch: str, dyn_mode: str, spatial: str = "1-1-1-1", channel: str = "1-1-1-1", masker: str = "MLP",
              layers: int = 2, reduction: int = 16, **extra) -> str:
    """``str(args)`` of the official parser, with the clutter its training adds."""
    return str(argparse.Namespace(
        config="configs/finetune_100eps_1024bs_lr0x08.py", data_url="/data/ImageNet/",
        train_url=f"./log/{arch}/dyn_mode_{dyn_mode}/spatial_granularity_{spatial}/", arch=arch, lr=0.08,
        mask_channel_group="1-1-1-1", mask_spatial_granularity=spatial, channel_dyn_granularity=channel,
        dyn_mode=dyn_mode, channel_masker="-".join([masker] * 4), channel_masker_layers="-".join([str(layers)] * 4),
        channel_masker_reduction="-".join([str(reduction)] * 4), IMAGE_SIZE=SIZE,
        list_dyn_mode=dyn_mode.split("-"), list_mask_spatial_granularity=[int(s) for s in spatial.split("-")],
        **extra))


def official_layout(state: dict) -> dict:
    """laudnet keys → the official code's."""
    out = {}
    for key, value in state.items():
        if key.startswith("trunk_output.") and ".masker_" in key:
            key = key.replace(".masker_", ".f.masker_")
        out[key.replace(".masker_channel.layers.", ".masker_channel.conv.")] = value
    return out


def randomize_maskers_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random masker weights (the conv_linear masker's conv has no bias), so gates differ per position and sample."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if ".masker_" in f".{name}" and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=g))
    return model


def official_checkpoint(name: str, arch: str, dyn_mode: str, spatial: str = "1-1-1-1", channel: str = "1-1-1-1",
                        masker: str = "MLP", layers: int = 2, seed: int = 0, **options) -> dict:
    """An official-format checkpoint of random weights whose masks mix computed and skipped work."""
    kind = {"MLP": "mlp"}.get(masker, masker)
    source = create_model(name, mode=dyn_mode, spatial_granularity=spatial, channel_granularity=channel,
                          channel_masker=kind, masker_layers=layers, num_classes=5, **options)
    randomize_maskers_(randomize_(source, seed), seed + 1)
    state = official_layout(source.state_dict())
    if layers == 1 and kind == "mlp":  # a one-layer MLP is the Linear itself: conv.weight, conv.bias
        state = {k.replace(".masker_channel.conv.0.", ".masker_channel.conv."): v for k, v in state.items()}
    return {"epoch": 100, "model": arch, "hyper_set": hyper_set(arch, dyn_mode, spatial, channel, masker, layers),
            "state_dict": state, "best_acc1": torch.tensor(71.2), "optimizer": {"state": {}, "param_groups": []}}


# -- the official forward pass, from its description -----------------------------------------

def _bn(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], False,
                        0.0, 1e-5)


def _blocks(s: dict, family: str):
    """``(prefix, masker prefix, stage, stride)`` of every block, in order."""
    for stage in range(4):
        i = 0
        while True:
            p = f"layer{stage + 1}.{i}" if family == "resnet" else f"trunk_output.block{stage + 1}.block{stage + 1}-{i}"
            if f"{p}.conv1.weight" not in s and f"{p}.f.a.0.weight" not in s:
                break
            stride = 2 if i == 0 and (stage > 0 or family == "regnet") else 1
            yield p, (p if family == "resnet" else f"{p}.f"), stage, stride
            i += 1


def official_logits(s: dict, x: torch.Tensor, family: str, modes: list[str], spatial: list[int]) -> torch.Tensor:
    """Eval-mode official LAUDNet: gates ``on >= off``; ResNet masks channels after the conv (before BN),
    RegNet after BN+ReLU; the pixel mask (cells of the output grid at IMAGE_SIZE, nearest-upsampled)
    multiplies the last BN's output; RegNet's SE pools over all positions."""
    if family == "resnet":
        x = F.max_pool2d(F.relu(_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1")), 3, 2, 1)
    else:
        x = F.relu(_bn(F.conv2d(x, s["stem.0.weight"], stride=2, padding=1), s, "stem.1"))
    for p, m, stage, stride in _blocks(s, family):
        mode, out_size = modes[stage], SIZE // 2 ** (stage + 2)
        pix = channel = None
        if mode in ("spatial", "layer", "both"):
            cells = 1 if mode == "layer" else out_size // spatial[stage]
            pooled = F.adaptive_avg_pool2d(x, cells) if cells < x.shape[-1] else x
            logits = F.conv2d(pooled, s[f"{m}.masker_spatial.conv.weight"], s[f"{m}.masker_spatial.conv.bias"])
            pix = F.interpolate((logits[:, :1] >= logits[:, 1:]).float(), size=out_size, mode="nearest")
        if mode in ("channel", "both"):
            if f"{m}.masker_channel.linear.weight" in s:  # conv_linear
                h = F.relu(_bn(F.conv2d(x, s[f"{m}.masker_channel.conv.0.weight"]), s, f"{m}.masker_channel.conv.1"))
                logits = F.linear(h.mean((2, 3)), s[f"{m}.masker_channel.linear.weight"],
                                  s[f"{m}.masker_channel.linear.bias"])
            elif f"{m}.masker_channel.conv.weight" in s:  # one-layer MLP
                logits = F.linear(x.mean((2, 3)), s[f"{m}.masker_channel.conv.weight"],
                                  s[f"{m}.masker_channel.conv.bias"])
            else:
                h = F.relu(F.linear(x.mean((2, 3)), s[f"{m}.masker_channel.conv.0.weight"],
                                    s[f"{m}.masker_channel.conv.0.bias"]))
                logits = F.linear(h, s[f"{m}.masker_channel.conv.2.weight"], s[f"{m}.masker_channel.conv.2.bias"])
            groups = logits.shape[1] // 2
            decisions = (logits[:, :groups] >= logits[:, groups:]).float()
            width = (s[f"{p}.conv1.weight"] if family == "resnet" else s[f"{p}.f.a.0.weight"]).shape[0]
            channel = decisions.repeat_interleave(width // groups, 1)[..., None, None]
        if family == "resnet":
            out = F.conv2d(x, s[f"{p}.conv1.weight"])
            out = F.relu(_bn(out * channel if channel is not None else out, s, f"{p}.bn1"))
            out = F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1)
            out = F.relu(_bn(out * channel if channel is not None else out, s, f"{p}.bn2"))
            out = _bn(F.conv2d(out, s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
            proj = f"{p}.downsample"
        else:
            out = F.relu(_bn(F.conv2d(x, s[f"{p}.f.a.0.weight"]), s, f"{p}.f.a.1"))
            out = out * channel if channel is not None else out
            w2 = s[f"{p}.f.b.0.weight"]
            out = F.relu(_bn(F.conv2d(out, w2, stride=stride, padding=1, groups=w2.shape[0] // w2.shape[1]), s,
                             f"{p}.f.b.1"))
            out = out * channel if channel is not None else out
            se = F.relu(F.conv2d(out.mean((2, 3), keepdim=True), s[f"{p}.f.se.fc1.weight"], s[f"{p}.f.se.fc1.bias"]))
            out = out * torch.sigmoid(F.conv2d(se, s[f"{p}.f.se.fc2.weight"], s[f"{p}.f.se.fc2.bias"]))
            out = _bn(F.conv2d(out, s[f"{p}.f.c.0.weight"]), s, f"{p}.f.c.1")
            proj = f"{p}.proj"
        if pix is not None:
            out = out * pix
        identity = x
        if f"{proj}.0.weight" in s:
            identity = _bn(F.conv2d(x, s[f"{proj}.0.weight"], stride=stride), s, f"{proj}.1")
        x = F.relu(out + identity)
    return F.linear(x.mean((2, 3)), s["fc.weight"], s["fc.bias"])


CASES = [  # laudnet model, official arch, dyn_mode, S, G, masker, masker layers
    ("laud_resnet50", "uni_resnet50", "spatial", "2-2-2-1", "1-1-1-1", "MLP", 2),
    ("laud_resnet50", "uni_resnet50", "channel", "1-1-1-1", "2-2-2-2", "MLP", 1),
    ("laud_resnet50", "uni_resnet50", "layer", "16-8-4-2", "1-1-1-1", "MLP", 2),
    ("laud_resnet50", "uni_resnet50", "both", "2-2-1-1", "4-4-4-4", "conv_linear", 2),
    ("laud_resnet101", "uni_resnet101", "both", "2-2-2-1", "2-2-2-2", "MLP", 2),
    ("laud_regnet_y_400mf", "lad_regnet_y_400mf", "spatial", "2-2-2-1", "1-1-1-1", "MLP", 2),
    ("laud_regnet_y_400mf", "lad_regnet_y_400mf", "channel", "1-1-1-1", "1-1-1-1", "MLP", 2),
    ("laud_regnet_y_400mf", "lad_regnet_y_400mf", "both", "2-2-2-1", "8-8-8-8", "conv_linear", 2),
    ("laud_regnet_y_800mf", "lad_regnet_y_800mf", "both", "2-2-2-1", "1-1-1-1", "MLP", 2),
]
# What the fixtures are built with: the options the official code behaves as.
OFFICIAL_OPTIONS = {"resnet": {"channel_mask_placement": "before_bn"},
                    "regnet": {"se_pooling": "all", "split_conv_groups": True}}


@pytest.mark.parametrize("name, arch, mode, spatial, channel, masker, layers", CASES,
                         ids=[f"{c[1]}-{c[2]}-{c[5]}" for c in CASES])
def test_from_official_reproduces_the_official_logits(tmp_path, name, arch, mode, spatial, channel, masker, layers):
    family = "resnet" if "resnet" in name else "regnet"
    modes = "-".join([mode] * 4)
    checkpoint = official_checkpoint(name, arch, modes, spatial, channel, masker, layers, **OFFICIAL_OPTIONS[family])
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete official checkpoint loads without a warning
        model = from_official(path).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x, return_stats=True)
        expected = official_logits(checkpoint["state_dict"], x, family, [mode] * 4,
                                   [int(v) for v in spatial.split("-")])
    assert float((out.logits - expected).abs().max() / expected.abs().max()) < 1e-5
    assert 0.05 < float(out.stats.macs_ratio.mean()) < 0.95, "the random maskers should skip part of the work"
    kwargs = model.build_config["kwargs"]
    assert kwargs["channel_mask_placement"] == ("before_bn" if family == "resnet" else "after_act")
    assert kwargs.get("se_pooling", "computed") == ("all" if family == "regnet" else "computed")
    assert kwargs["num_classes"] == 5 and kwargs["mode"] == [mode] * 4


def test_every_checkpoint_loader_rebuilds_official_checkpoints(tmp_path):
    """model_from_checkpoint, which every --checkpoint command uses, delegates to from_official."""
    checkpoint = official_checkpoint("laud_regnet_y_400mf", "lad_regnet_y_400mf", "both-both-both-both", "2-2-2-1",
                                     "8-8-8-8", **OFFICIAL_OPTIONS["regnet"])
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(path).eval()(x), from_official(path).eval()(x), rtol=0, atol=0)


def test_the_options_matter_for_regnet(tmp_path):
    """Without SE over all positions (spatial) or with masks before BN (channel) the logits differ."""
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for mode, override in (("spatial", {"se_pooling": "computed"}),
                           ("channel", {"channel_mask_placement": "before_bn"})):
        checkpoint = official_checkpoint("laud_regnet_y_400mf", "lad_regnet_y_400mf", "-".join([mode] * 4), "2-2-2-1",
                                         "1-1-1-1", **OFFICIAL_OPTIONS["regnet"])
        with torch.no_grad():
            official = from_official(checkpoint).eval()(x)
            changed = from_official(checkpoint, **override).eval()(x)
        assert float((official - changed).abs().max() / official.abs().max()) > 1e-4, override


def test_hyper_set_parsing_and_its_errors():
    text = hyper_set("lad_regnet_y_800mf", "spatial-spatial-channel-channel", "4-4-2-1", "1-1-16-16",
                     cfg="Config (path: configs/x.py): {'train_cfg': dict(dyn_mode='both')}")
    config = parse_hyper_set(text)
    assert (config.arch, config.modes, config.spatial_granularity) == (
        "lad_regnet_y_800mf", ("spatial", "spatial", "channel", "channel"), (4, 4, 2, 1))
    assert config.channel_granularity == (1, 1, 16, 16) and config.image_size == SIZE
    with pytest.raises(CheckpointError, match="official arch 'lad_regnet_x_400mf' has no laudnet model; supported: "
                                              "uni_resnet50, uni_resnet101"):
        parse_hyper_set(hyper_set("lad_regnet_x_400mf", "channel-channel-channel-channel"))
    with pytest.raises(CheckpointError, match="does not name dyn_mode"):
        parse_hyper_set("Namespace(arch='uni_resnet50', lr=0.1)")
    with pytest.raises(CheckpointError, match="spatial masks per channel group .stages 1, 2, 3, 4. are not supported"):
        parse_hyper_set(hyper_set("uni_resnet50", "spatial-spatial-spatial-spatial").replace(
            "mask_channel_group='1-1-1-1'", "mask_channel_group='2-2-2-2'"))
    mixed = hyper_set("uni_resnet50", "channel-channel-channel-channel").replace(
        "channel_masker='MLP-MLP-MLP-MLP'", "channel_masker='MLP-conv_linear-MLP-MLP'")
    with pytest.raises(CheckpointError, match="channel_masker differs between the channel stages"):
        parse_hyper_set(mixed).model_kwargs()


def test_official_checkpoints_given_to_the_wrong_loader_name_the_right_call(tmp_path):
    checkpoint = official_checkpoint("laud_resnet50", "uni_resnet50", "channel-channel-channel-channel",
                                     channel="2-2-2-2", channel_mask_placement="before_bn")
    path = tmp_path / "official.pth.tar"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=rf"was trained as laud_resnet50 channel.*G=2-2-2-2 "
                                              rf"channel_mask_placement='before_bn'; this model is laud_resnet50 "
                                              rf".*load it with laudnet.models.from_official\('{path}'\)"):
        create_model("laud_resnet50", mode="channel", channel_granularity=2, num_classes=5, weights=path)
    # Built with the official options, the same call loads it.
    model = create_model("laud_resnet50", mode="channel", channel_granularity=2, num_classes=5, weights=path,
                         channel_mask_placement="before_bn")
    reference = from_official(path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_missing_maskers_and_torchvision_weights_warn(tmp_path):
    checkpoint = official_checkpoint("laud_resnet50", "uni_resnet50", "spatial-spatial-spatial-spatial", "2-2-2-1")
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if ".masker_" not in k}
    with pytest.warns(CheckpointWarning, match=r"its hyper_set is spatial.* but 32 masker tensors are missing"):
        from_official(checkpoint)
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.warns(CheckpointWarning, match="holds no LAUDNet masker weights .torchvision weights"):
        state = convert_official_state_dict(path)  # a path works as well as a dict
    assert set(state) == set(torchvision.models.resnet50().state_dict())


def test_eval_command_reads_official_checkpoints(tmp_path, capsys):
    from PIL import Image

    checkpoint = official_checkpoint("laud_resnet50", "uni_resnet50", "layer-layer-layer-layer", "16-8-4-2")
    path = tmp_path / "official.pth.tar"
    torch.save(checkpoint, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"laudnet eval: error: {path} is an official LAUDNet checkpoint, which records no laudnet data settings: "
        "give --data (an ImageNet-layout folder with train/ and val/)")
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(5):
            (tmp_path / "data" / split / f"class{c}").mkdir(parents=True)
            pixels = (torch.rand(SIZE + 8, SIZE + 8, 3, generator=generator) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / split / f"class{c}" / "a.png")
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path / "data"), "--workers", "0", "--device",
                 "cpu", "--json"]) == 0
    assert '"count": 5' in capsys.readouterr().out


# -- MACs in the official convention: the official code's own numbers --------------------------

# Measured with the official code at 224×224: its op counter on the static networks (dense), and
# its models' forward count with every gate on / off (float32, so within a few units in 1e8).
OFFICIAL_DENSE = {"laud_resnet50": 4091091944, "laud_resnet101": 7803313128, "laud_regnet_y_400mf": 402638760,
                  "laud_regnet_y_800mf": 835018280}
OFFICIAL_DYNAMIC = [
    ("laud_resnet50", dict(mode="spatial", spatial_granularity="4-4-2-1"), 4093902848, 484442112),
    ("laud_resnet50", dict(mode="channel", channel_granularity=2), 4096882688, 487421952),
    ("laud_resnet50", dict(mode="layer", spatial_granularity="56-28-14-7"), 4091045120, 481584384),
    ("laud_resnet50", dict(mode="channel", channel_granularity=2, channel_masker="conv_linear"), 4092610048, 483149312),
    ("laud_regnet_y_400mf", dict(mode="spatial", spatial_granularity="4-4-2-1"), 402614752, 30167704),
    ("laud_regnet_y_400mf", dict(mode="channel", channel_granularity=1, split_conv_groups=True), 403274112, 30827144),
    ("laud_regnet_y_400mf", dict(mode="both", spatial_granularity="4-4-2-1", channel_granularity=8), 403842176,
     31395088),
    ("laud_regnet_y_800mf", dict(mode="channel", channel_granularity=16), 835409216, 48988224),
]


def test_official_macs_convention_reproduces_the_official_counts():
    for name, dense in OFFICIAL_DENSE.items():
        assert count_macs(create_meta_model(name), 224, convention="official").dense_macs == dense
    for name, kwargs, on, off in OFFICIAL_DYNAMIC:
        model = create_meta_model(name, **kwargs)
        assert count_macs(model, 224, 1.0, "official").dynamic_macs == pytest.approx(on, rel=1e-6), kwargs
        assert count_macs(model, 224, 0.0, "official").dynamic_macs == pytest.approx(off, rel=1e-6), kwargs
    # laudnet's own convention is torch's flop counter / 2 for the static network (torchvision's 4.09 G)
    assert count_macs(create_meta_model("laud_resnet50"), 224).dense_macs == 4089184256


def test_laudnet_macs_of_the_official_options_follow_what_runs():
    """conv2 of channel groups that split conv groups scales with the kept fraction squared; the
    conv_linear masker's conv runs at every input position; the forward statistics agree."""
    split = create_meta_model("laud_regnet_y_400mf", mode="channel", channel_granularity=1, split_conv_groups=True)
    whole = create_meta_model("laud_regnet_y_400mf", mode="channel", channel_granularity=8)
    half_split, half_whole = count_macs(split, 224, 0.5), count_macs(whole, 224, 0.5)
    split_shape, whole_shape = model_shape(split, 224), model_shape(whole, 224)
    conv2 = sum(b.conv2.macs for b in split_shape.blocks)
    masker_difference = (sum(b.masker_macs() for b in split_shape.blocks)
                         - sum(b.masker_macs() for b in whole_shape.blocks))
    # conv2 at 0.25 instead of 0.5 of its MACs; the maskers differ by their decision counts
    assert half_whole.dynamic_macs - half_split.dynamic_macs == pytest.approx(0.25 * conv2 - masker_difference)
    model = create_model("laud_resnet50", mode="both", spatial_granularity=2, channel_granularity=4,
                         channel_masker="conv_linear", width_multiplier=0.25, layers=(1, 1, 1, 1)).eval()
    model.set_forced_gates(True)
    with torch.no_grad():
        stats = model(torch.randn(1, 3, 64, 64), return_stats=True).stats
    report = count_macs(model, 64, 1.0)
    assert float(stats.dynamic_macs[0]) == pytest.approx(report.dynamic_macs, rel=1e-12)
    mlp = count_macs(create_meta_model("laud_resnet50", mode="both", spatial_granularity=2, channel_granularity=4,
                                       width_multiplier=0.25, layers=(1, 1, 1, 1)), 64, 1.0)
    assert report.dynamic_macs > mlp.dynamic_macs  # the conv on every position costs more than the MLP


def test_macs_command_official_convention(capsys):
    assert main(["model", "macs", "laud_regnet_y_400mf", "--mode", "channel", "-G", "1", "--convention", "official",
                 "--density", "0", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"convention": "official"' in out and '"dynamic_macs": 30827144' in out
