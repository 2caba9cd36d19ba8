"""torchvision's RetinaNet, Faster R-CNN and Mask R-CNN on a LAUD-ResNet backbone with an FPN.

The detectors are torchvision's own classes; only the backbone differs. :class:`LaudFPN`
runs the LAUD model's stem and four stages, feeds the stage outputs to torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` and keeps what the dynamic blocks computed
in :attr:`LaudFPN.last_stats`, so a trainer can add the sparsity loss to the detector's
losses. Its state_dict keys are those of torchvision's ``BackboneWithFPN`` (``body.*``,
``fpn.*``) plus the maskers' (and the unused classifier's).

As in torchvision's and the paper's recipes, the stem and the first stage are frozen and
BatchNorm is frozen by default; the maskers always train (they decide what to compute
and start every gate on).
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from ..dynamic.spec import PerStage
from ..dynamic.stats import ModelStats
from ..models import DynamicBackbone, create_model
from ..models.weights import WeightsArg
from ..errors import UsageError

DETECTORS: tuple[str, ...] = ("retinanet", "faster_rcnn", "mask_rcnn")
BACKBONES: tuple[str, ...] = ("laud_resnet50", "laud_resnet101")

# Feature levels read from the backbone (1 = stage 1 / C2 ... 4 = C5), as torchvision's builders:
# RetinaNet skips P2 (too many anchors) and adds P6/P7; the R-CNNs use P2-P5 and a pooled P6.
_RETURNED_STAGES = {"retinanet": (2, 3, 4), "faster_rcnn": (1, 2, 3, 4), "mask_rcnn": (1, 2, 3, 4)}
# Module-name prefixes that train, from the top, for each ``trainable_layers`` (torchvision's rule).
_TRAINABLE_PREFIXES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` with its statistics.

    The blocks read their norms through attributes on every call, so the swap is transparent.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batchnorm(child)
    return module


class LaudFPN(nn.Module):
    """A LAUD-ResNet body and an FPN: ``forward(images)`` returns the pyramid as torchvision's
    ``BackboneWithFPN`` does, and leaves the body's :class:`ModelStats` in :attr:`last_stats`.

    MACs in the statistics are those of the stem and the residual blocks (no classifier)
    at the size of the padded batch, per image. With an ``engine`` (set by
    :func:`laudnet.detection.sparse.convert_detector`) the body's stages run on the sparse engine.
    """

    def __init__(self, body: DynamicBackbone, returned_stages: tuple[int, ...], out_channels: int,
                 extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        self.body = body
        self.returned_stages = tuple(returned_stages)
        stage_channels = [stage[-1].conv3.out_channels for stage in body.stages()]
        self.fpn = FeaturePyramidNetwork([stage_channels[s - 1] for s in self.returned_stages], out_channels,
                                         extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self.last_stats: ModelStats | None = None
        self.engine: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.engine is None:
            out = self.body.forward_features(x)
            features, blocks = out.features, out.blocks
        else:  # the sparse engine (laudnet.detection.sparse); it may leave the blocks' statistics
            features = self.engine.features(x)
            blocks = [block.last_stats for _, block in self.body.named_dynamic_blocks()]
            blocks = blocks if self.engine.records_stats else None
        self.last_stats = self.body.model_stats(blocks, hw, include_head=False) if blocks is not None else None
        levels = OrderedDict((str(i), features[s - 1]) for i, s in enumerate(self.returned_stages))
        return self.fpn(levels)


def _freeze_layers(body: DynamicBackbone, trainable_layers: int) -> None:
    """torchvision's rule: train the top ``trainable_layers`` of layer4 … layer1, conv1 (5: all,
    stem BN included). Maskers always train; the unused classifier never does."""
    prefixes = list(_TRAINABLE_PREFIXES[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, parameter in body.named_parameters():
        trainable = ".masker_" in name or (any(name.startswith(p) for p in prefixes) and not name.startswith("fc."))
        parameter.requires_grad_(trainable)


def build_laud_fpn(
    detector: str, backbone: str = "laud_resnet50", *, mode: PerStage = "static", spatial_granularity: PerStage = 1,
    channel_granularity: PerStage | None = None, weights_backbone: WeightsArg = None, trainable_layers: int = 3,
    frozen_bn: bool = True, fpn_channels: int = 256, model_kwargs: dict | None = None,
) -> LaudFPN:
    """The LAUD backbone + FPN that :func:`build_detector` puts under a ``detector``."""
    _check_choice("detector", detector, DETECTORS)
    _check_choice("backbone", backbone, BACKBONES)
    if not 0 <= trainable_layers <= 5:
        raise UsageError(f"trainable_layers must be between 0 and 5, got {trainable_layers}")
    body = create_model(backbone, mode=mode, spatial_granularity=spatial_granularity,
                        channel_granularity=channel_granularity, weights=weights_backbone, **(model_kwargs or {}))
    if frozen_bn:
        freeze_batchnorm(body)
    _freeze_layers(body, trainable_layers)
    extra = LastLevelP6P7(fpn_channels, fpn_channels) if detector == "retinanet" else LastLevelMaxPool()
    return LaudFPN(body, _RETURNED_STAGES[detector], fpn_channels, extra)


def _anchors(detector: str, anchor_size: int, levels: int) -> AnchorGenerator:
    """torchvision's anchors, scaled so the finest level's are ``anchor_size`` pixels (32 on COCO)."""
    sizes = [anchor_size * 2**i for i in range(levels)]
    if detector == "retinanet":  # three octave scales per level
        per_level = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
    else:
        per_level = tuple((s,) for s in sizes)
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * levels)


def build_detector(
    detector: str, backbone: str = "laud_resnet50", *, mode: PerStage = "static", spatial_granularity: PerStage = 1,
    channel_granularity: PerStage | None = None, weights_backbone: WeightsArg = None, num_classes: int = 91,
    trainable_layers: int = 3, frozen_bn: bool = True, fpn_channels: int = 256, anchor_size: int = 32,
    min_size: int = 800, max_size: int = 1333, representation_size: int = 1024, mask_head_channels: int = 256,
    model_kwargs: dict | None = None, **detector_kwargs,
) -> nn.Module:
    """A torchvision ``RetinaNet`` / ``FasterRCNN`` / ``MaskRCNN`` with a LAUD-ResNet + FPN backbone.

    Args:
        detector: ``retinanet``, ``faster_rcnn`` or ``mask_rcnn``.
        backbone: ``laud_resnet50`` or ``laud_resnet101``; ``mode`` / ``spatial_granularity`` /
            ``channel_granularity`` / ``model_kwargs`` as for :func:`laudnet.create_model`.
        weights_backbone: the backbone's weights (torchvision enum name, or a laudnet / official
            checkpoint file); the detection heads start from torchvision's initialisation.
        num_classes: including the background (91 for COCO's category ids, K + 1 for K classes).
        trainable_layers: backbone stages that train, from the top (torchvision's 0-5; 3 by default).
        frozen_bn: replace the backbone's BatchNorm by FrozenBatchNorm2d.
        fpn_channels, representation_size, mask_head_channels: widths of the FPN, the R-CNN box
            head's MLP and the Mask R-CNN mask head (torchvision's defaults; smaller for small models).
        anchor_size: anchor side on the finest pyramid level, doubling per level.
        min_size, max_size: torchvision's resizing of each image before batching.
        detector_kwargs: any other argument of the torchvision detector (``score_thresh``, ...).

    The returned model remembers its arguments in ``build_config`` (plain data), so a
    checkpoint can rebuild it (:func:`laudnet.detection.detector_from_checkpoint`).
    """
    config = {"name": detector, "kwargs": _plain_data({
        "backbone": backbone, "mode": mode, "spatial_granularity": spatial_granularity,
        "channel_granularity": channel_granularity, "num_classes": num_classes, "trainable_layers": trainable_layers,
        "frozen_bn": frozen_bn, "fpn_channels": fpn_channels, "anchor_size": anchor_size, "min_size": min_size,
        "max_size": max_size, "representation_size": representation_size, "mask_head_channels": mask_head_channels,
        "model_kwargs": dict(model_kwargs or {}), **detector_kwargs})}
    if num_classes < 2:
        raise UsageError(f"num_classes counts the background too and must be at least 2, got {num_classes}")
    _check_detector_kwargs(detector, detector_kwargs)
    body = build_laud_fpn(detector, backbone, mode=mode, spatial_granularity=spatial_granularity,
                          channel_granularity=channel_granularity, weights_backbone=weights_backbone,
                          trainable_layers=trainable_layers, frozen_bn=frozen_bn, fpn_channels=fpn_channels,
                          model_kwargs=model_kwargs)
    common = dict(min_size=min_size, max_size=max_size, **detector_kwargs)
    if detector == "retinanet":
        model = RetinaNet(body, num_classes, anchor_generator=_anchors(detector, anchor_size, 5), **common)
    else:
        box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        common.update(rpn_anchor_generator=_anchors(detector, anchor_size, 5), box_head=box_head)
        if detector == "faster_rcnn":
            model = FasterRCNN(body, box_predictor=FastRCNNPredictor(representation_size, num_classes), **common)
        else:
            width = mask_head_channels
            model = MaskRCNN(body, box_predictor=FastRCNNPredictor(representation_size, num_classes),
                             mask_head=MaskRCNNHeads(fpn_channels, (width,) * 4, 1),
                             mask_predictor=MaskRCNNPredictor(width, width, num_classes), **common)
    model.build_config = config
    return model


# The torchvision detectors, the arguments laudnet's builder sets itself, and those the detectors
# pass on to their GeneralizedRCNNTransform through ``**kwargs`` (which ignores what it does not know).
_DETECTOR_CLASSES = {"retinanet": RetinaNet, "faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN}
_SET_BY_LAUDNET = {"self", "backbone", "num_classes", "kwargs", "min_size", "max_size", "anchor_generator",
                   "rpn_anchor_generator", "box_head", "box_predictor", "mask_head", "mask_predictor"}
_TRANSFORM_ARGUMENTS = ("size_divisible", "fixed_size")


def detector_arguments(detector: str) -> list[str]:
    """The torchvision detector's arguments that :func:`build_detector`'s ``detector_kwargs`` may set."""
    _check_choice("detector", detector, DETECTORS)
    parameters = inspect.signature(_DETECTOR_CLASSES[detector].__init__).parameters
    return [p for p in parameters if p not in _SET_BY_LAUDNET] + list(_TRANSFORM_ARGUMENTS)


def _check_detector_kwargs(detector: str, kwargs: dict) -> None:
    """Refuse keyword arguments the torchvision detector would silently drop."""
    accepted = detector_arguments(detector)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(
            f"{detector} takes no {', '.join(unknown)} (torchvision would ignore it silently); the backbone's "
            f"options (channel_mask_placement, width_multiplier, ...) go in model_kwargs; accepted: {', '.join(accepted)}")


def laud_backbone(detector: nn.Module) -> LaudFPN:
    """The :class:`LaudFPN` of a detector built by :func:`build_detector` (under DDP too)."""
    module = getattr(detector, "module", detector)
    backbone = getattr(module, "backbone", None)
    if not isinstance(backbone, LaudFPN):
        raise TypeError(f"{type(module).__name__} has no LAUD backbone (build it with laudnet.detection.build_detector)")
    return backbone


def _plain_data(value: dict) -> dict:
    """Lists for tuples, and an error for anything JSON cannot hold: checkpoints load with ``weights_only=True``."""
    try:
        return json.loads(json.dumps(value))
    except TypeError as error:
        raise UsageError(f"detector arguments must be plain data (numbers, strings, lists, dicts): {error}") from None


def _check_choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise UsageError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
