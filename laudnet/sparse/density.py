"""Setting a model's gates to a chosen density without training.

Benchmarks of the sparse engine and the device measurements need models that skip a known
fraction of their work. :func:`set_gate_density` shifts each masker's *compute* logit
biases so that the given fraction of its decisions on a set of images is *compute* (spatial
cells, channel groups and block gates of CNNs; tokens, head groups and sub-blocks of ViTs); the
masks remain the model's own decisions, so the engine and the masked model agree on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..dynamic.maskers import ChannelMasker, SpatialMasker
from ..models.backbone import DynamicBackbone
from ..models.vit import LaudViTBlock
from ..errors import UsageError


@dataclass
class GateDensity:
    """What :func:`set_gate_density` reached on its images.

    ``achieved`` is the fraction of all masker decisions that compute (spatial cells, block
    gates and channel groups alike); ``blocks`` the same per block name.
    """

    density: float
    achieved: float
    blocks: dict[str, float]


def _decision_layer(masker: nn.Module) -> tuple[nn.Module, int]:
    """The layer emitting a masker's (compute, skip) logits and how many decisions it makes."""
    if isinstance(masker, SpatialMasker):
        return masker.conv, 1
    if isinstance(masker, ChannelMasker):
        return masker.layers[-1], masker.num_groups
    raise TypeError(f"unknown masker {type(masker).__name__}")


def _margins(logits: torch.Tensor, decisions: int) -> torch.Tensor:
    """``logit_compute - logit_skip`` per decision (a gate is on where this is >= 0)."""
    pairs = logits.reshape(logits.shape[0], 2, decisions, -1)
    return (pairs[:, 0] - pairs[:, 1]).reshape(-1)


def _shift(margins: torch.Tensor, density: float) -> float:
    """The bias shift that turns on the ``density`` fraction of decisions with the largest margins.

    At density 0 or 1 every decision is moved clear of the threshold by at least the spread of
    the margins, so images like the given ones get the same all-off / all-on masks.
    """
    ordered = margins.double().sort(descending=True).values
    n = ordered.numel()
    k = int(round(density * n))
    clearance = max(1.0, float(ordered[0] - ordered[-1]))
    if k == 0:
        return -float(ordered[0]) - clearance
    if k == n:
        return -float(ordered[-1]) + clearance
    return -float(ordered[k - 1] + ordered[k]) / 2


def _randomize_if_untrained(layer: nn.Module, generator: torch.Generator) -> None:
    """Give an all-zero decision layer (an untrained masker) random weights, so decisions can differ."""
    if bool(torch.any(layer.weight != 0)):
        return
    fan_in = layer.weight[0].numel()
    noise = torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64) / fan_in**0.5
    layer.weight.copy_(noise.to(layer.weight))


def _block_margins(block: nn.Module, x: torch.Tensor,
                   generator: torch.Generator) -> Iterator[tuple[nn.Module, int, torch.Tensor]]:
    """Each masker of ``block`` (a CNN bottleneck or a ViT block) on the block's input ``x``: its
    decision layer (given random weights first if untrained), its decision count and its margins."""
    if isinstance(block, LaudViTBlock):
        summary = x.mean(dim=1)  # head and sub-block maskers read the mean token
        for masker, inputs in ((block.masker_token, x[:, 1:]), (block.masker_head, summary),
                               (block.masker_layer, summary)):
            if masker is not None:
                _randomize_if_untrained(masker.linear, generator)
                logits = masker.logits(inputs)
                yield masker.linear, masker.decisions, (logits[:, 0] - logits[:, 1]).reshape(-1)
        return
    for masker in (block.masker_spatial, block.masker_channel):
        if masker is None:
            continue
        layer, decisions = _decision_layer(masker)
        _randomize_if_untrained(layer, generator)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            block.compute_masks(x)
        finally:
            handle.remove()
        yield layer, decisions, _margins(captured[0], decisions)


@torch.no_grad()
def set_gate_density(
    model: DynamicBackbone, density: float, images: torch.Tensor, seed: int = 0
) -> GateDensity:
    """Shift every masker's biases so that a ``density`` fraction of its decisions on ``images`` compute.

    Blocks are set in order during one forward pass, each on the features produced by
    the blocks already set before it. Each masker gets one shift (shared by its cells or
    channel groups), set at the quantile of its decision margins over ``images``, so the
    per-image density follows the spread of the masker's own logits (a whole-block gate decides
    once per image, so its density moves in steps of ``1 / len(images)``). Maskers whose decision
    layer is all zeros (an untrained model, whose decisions would all be equal) first get
    random weights drawn from ``seed``. Forced gates are cleared and the model is left in
    eval mode. Returns the density reached on ``images``.
    """
    if not 0.0 <= density <= 1.0:
        raise UsageError(f"density must be in [0, 1], got {density}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise UsageError(f"images: expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    model.eval()
    model.set_forced_gates(None)
    generator = torch.Generator().manual_seed(seed)
    reached: dict[str, tuple[float, int]] = {}

    def set_block(block: nn.Module, args: tuple) -> None:
        on, total = 0.0, 0
        for layer, decisions, margins in _block_margins(block, args[0], generator):
            shift = _shift(margins, density)
            layer.bias[:decisions] += shift
            on += float((margins + shift >= 0).sum())
            total += margins.numel()
        if total:
            reached[block.block_name] = (on, total)

    handles = [block.register_forward_pre_hook(set_block) for _, block in model.named_dynamic_blocks()]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    on = sum(v[0] for v in reached.values())
    total = sum(v[1] for v in reached.values())
    return GateDensity(
        density=float(density),
        achieved=on / total if total else 1.0,
        blocks={name: v[0] / v[1] for name, v in reached.items()},
    )
