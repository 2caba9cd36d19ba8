"""Shared test helpers: deterministic, non-trivial weights for models built without downloads."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers random affine parameters and running statistics, so equivalence
    tests compare non-trivial functions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.2 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


def randomize_maskers_(model: nn.Module, seed: int = 0, bias: float = 0.5) -> nn.Module:
    """Give every masker random weights (so gates differ across positions, channels and samples)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if ".masker_" in f".{name}" and isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / fan_in**0.5)
                module.bias.copy_(bias * torch.randn(module.bias.shape, generator=g))
    return model


# A short but real training run on the built-in data, shared by the tests that need a trained
# model (learning, mask placement, evaluation, the sparse engine).
TINY_RUN = dict(
    model="laud_resnet50", model_kwargs={"width_multiplier": 0.125, "layers": [2, 2, 2, 2]},
    mode="spatial", spatial_granularity=1, data="synthetic", image_size=48, synthetic_classes=4,
    synthetic_object_size=12, synthetic_train_size=3072, synthetic_val_size=256, workers=0,
    pretrain_epochs=3, epochs=3, batch_size=32, lr=0.1, warmup_epochs=0.3, target=0.6, device="cpu", log_every=50,
)
