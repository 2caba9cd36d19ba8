"""LAUD detectors: every detector in every mode, odd image sizes, freezing, and equality with
torchvision's ResNet-FPN backbone when every gate is on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from laudnet.detection import DETECTORS, build_detector, laud_backbone
from laudnet.detection.models import build_laud_fpn
from laudnet.dynamic.spec import MODES
from laudnet.training.losses import sparsity_loss

from helpers import randomize_maskers_

# Small enough for a CPU test, every part of the real detectors.
TINY = dict(model_kwargs={"width_multiplier": 0.125, "layers": [1, 1, 1, 1]}, num_classes=3, trainable_layers=5,
            frozen_bn=False, fpn_channels=32, representation_size=64, mask_head_channels=16, anchor_size=8,
            min_size=61, max_size=200, size_divisible=1)
RPN = dict(rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50)  # the R-CNNs' proposals: fewer, for speed
SIZES = [(61, 83), (77, 59)]  # after resizing: 61×83 and 79×61, padded to an odd 79×83 batch


def _batch(masks: bool) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for h, w in SIZES:
        image = 0.1 * torch.rand(3, h, w, generator=g)
        boxes = torch.tensor([[8.0, 10.0, 30.0, 34.0], [35.0, 30.0, 55.0, 56.0]])
        m = torch.zeros(2, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            m[i, y0:y1, x0:x1] = 1
            image[i, y0:y1, x0:x1] = 0.9  # object i is bright in channel i
        target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
        if masks:
            target["masks"] = m
        images.append(image)
        targets.append(target)
    return images, targets


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_in_every_mode_trains_and_predicts_on_odd_sizes(detector, mode):
    torch.manual_seed(0)
    model = build_detector(detector, mode=mode, **TINY, **({} if detector == "retinanet" else RPN))
    backbone = laud_backbone(model)
    seen = []
    backbone.register_forward_hook(lambda module, args, out: seen.append((tuple(args[0].shape), out)))
    images, targets = _batch(masks=detector == "mask_rcnn")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    model.train()
    backbone.body.set_temperature(1.0)
    losses = []
    for _ in range(6):
        parts = model(images, targets)
        assert all(torch.isfinite(v) for v in parts.values()), parts
        loss = sum(parts.values()) + 5.0 * sparsity_loss(backbone.last_stats, 0.7, 0.0).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(detector, mode, [round(v, 3) for v in losses])
    assert losses[-1] < losses[0]

    # The masks follow the padded batch: one (odd-sized) grid per block over its own feature map.
    (batch_shape, pyramid), stats = seen[-1], backbone.last_stats
    assert batch_shape == (2, 3, 79, 83)
    assert stats.macs_ratio.shape == (2,)
    hw = (79, 83)
    hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))  # stem conv
    hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))  # max pool
    for i, block in enumerate(stats.blocks):
        if i > 0:
            hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
        if block.spatial_mask is not None and mode != "layer":
            assert tuple(block.spatial_mask.shape) == (2, 1, *hw), block.name
    assert pyramid["0"].shape[-2:] == ((20, 21) if detector != "retinanet" else (10, 11))

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for output, (h, w) in zip(outputs, SIZES):
        assert {"boxes", "labels", "scores"} <= set(output)
        assert output["boxes"].shape[1] == 4
        if len(output["boxes"]):
            assert float(output["boxes"][:, 2].max()) <= w and float(output["boxes"][:, 3].max()) <= h
        if detector == "mask_rcnn":
            assert output["masks"].shape[1:] == (1, h, w)


def _randomize_frozen_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(0.2 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))


@pytest.mark.parametrize("detector, returned, extra", [
    ("faster_rcnn", [1, 2, 3, 4], None),
    ("retinanet", [2, 3, 4], LastLevelP6P7(256, 256)),
])
def test_with_every_gate_on_the_features_equal_torchvisions_backbone(detector, returned, extra):
    torch.manual_seed(0)
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                    trainable_layers=3, returned_layers=returned, extra_blocks=extra).eval()
    with torch.no_grad():
        _randomize_frozen_bn(reference)
    ours = build_laud_fpn(detector, "laud_resnet50", mode="both", spatial_granularity=2, channel_granularity=4).eval()
    randomize_maskers_(ours)
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(".masker_" in k or k.startswith("body.fc.") for k in result.missing_keys)
    ours.body.set_forced_gates(True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
        ours.body.set_forced_gates(None)
        dynamic = ours(x)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # ... and the maskers do change them when they decide.
    assert not torch.allclose(dynamic["0"], expected["0"])
    assert ours.last_stats.macs_ratio.shape == (2,)


def test_freezing_follows_torchvision_and_maskers_always_train():
    model = build_detector("faster_rcnn", mode="spatial", num_classes=3,
                           model_kwargs={"width_multiplier": 0.125, "layers": [1, 1, 1, 1]})
    body = laud_backbone(model).body
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad and ".masker_" not in n}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert all(p.requires_grad for p in body.masker_parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert model.build_config["name"] == "faster_rcnn"

    all_layers = build_detector("retinanet", num_classes=3, trainable_layers=5, frozen_bn=False,
                                model_kwargs={"width_multiplier": 0.125, "layers": [1, 1, 1, 1]})
    body = laud_backbone(all_layers).body
    assert all(p.requires_grad for n, p in body.named_parameters() if not n.startswith("fc."))
    assert any(isinstance(m, nn.BatchNorm2d) for m in body.modules())


@pytest.mark.parametrize("kwargs, message", [
    ({"detector": "yolo"}, "unknown detector 'yolo'; accepted: retinanet, faster_rcnn, mask_rcnn"),
    ({"detector": "retinanet", "backbone": "laud_regnet_y_400mf"}, "unknown backbone"),
    ({"detector": "retinanet", "trainable_layers": 6}, "trainable_layers must be between 0 and 5"),
    ({"detector": "retinanet", "num_classes": 1}, "num_classes counts the background"),
    ({"detector": "faster_rcnn", "channel_mask_placement": "before_bn"},
     "faster_rcnn takes no channel_mask_placement .* the backbone's options .* go in model_kwargs"),
])
def test_bad_detector_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_detector(**kwargs, model_kwargs={"width_multiplier": 0.125, "layers": [1, 1, 1, 1]})
