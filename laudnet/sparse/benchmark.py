"""Measuring the engine against the masked model and the static network, side by side.

Latencies on a shared machine drift with its load, so the candidates are timed in the same
run, in sequential blocks, and the fastest call of each is reported (:mod:`laudnet.timing`):
a slow period then slows every candidate alike and their ratios stay meaningful.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from ..models.backbone import DynamicBackbone
from ..models.registry import create_model
from ..errors import UsageError
from ..timing import fastest_in_blocks
from .executor import SparseModel, convert

log = logging.getLogger(__name__)

# Builder arguments that leave the backbone exactly torchvision's.
_TORCHVISION_NEUTRAL = {
    "mode", "spatial_granularity", "channel_granularity", "channel_mask_placement", "masker_layers",
    "masker_reduction", "num_classes",
}


@dataclass
class LatencyComparison:
    """Fastest latencies (milliseconds per batch) measured in the same run, in sequential blocks.

    ``static_ms`` is the faster of the static network in NCHW and in channels-last layout
    (``static_layout``); ``static_model`` names that network. ``macs_ratio`` is the realised
    dynamic / dense MACs of the masked model on the timed input (mean over the batch).
    ``masked_ms`` is ``None`` when the masked model was not timed.
    """

    engine_ms: float
    masked_ms: float | None
    static_ms: float
    static_layout: str
    static_model: str
    macs_ratio: float
    batch: int
    input_hw: tuple[int, int]
    threads: int
    blocks: int
    calls: int

    @property
    def engine_vs_static(self) -> float:
        """Engine latency over static latency (compare with ``macs_ratio``, the ideal)."""
        return self.engine_ms / self.static_ms


def static_reference(model: DynamicBackbone) -> tuple[nn.Module, str]:
    """The static network with ``model``'s backbone weights, and its name.

    torchvision's own model where the architecture is torchvision's; otherwise (e.g. the
    quickstart's reduced ResNet) the same LAUD architecture built in static mode.
    """
    config = getattr(model, "build_config", None)
    if config is None:
        raise UsageError("the model was not built through the laudnet registry, so its static twin cannot be built")
    name, kwargs = config["name"], config.get("kwargs", {})
    weights = {k: v for k, v in model.state_dict().items() if ".masker_" not in k}
    tv_name = name.removeprefix("laud_")
    if set(kwargs) <= _TORCHVISION_NEUTRAL and hasattr(torchvision.models, tv_name):
        static = getattr(torchvision.models, tv_name)(num_classes=kwargs.get("num_classes", 1000))
        static.load_state_dict(weights)
        label = f"torchvision {tv_name}"
    else:
        static = create_model(name, **{**kwargs, "mode": "static"})
        static.load_state_dict(weights, strict=True)
        label = f"{name} static"
    param = next(model.parameters())
    return static.to(device=param.device, dtype=param.dtype).eval(), label


@torch.no_grad()
def compare_latency(
    model: DynamicBackbone,
    images: torch.Tensor,
    engine: SparseModel | None = None,
    warmup: int = 2,
    calls: int = 5,
    blocks: int = 3,
    measure_masked: bool = True,
) -> LatencyComparison:
    """Time the engine, the masked model and the static network on ``images`` side by side
    (``blocks`` rounds of ``calls`` timed calls each, after ``warmup`` calls; see :mod:`laudnet.timing`).

    ``engine`` defaults to ``convert(model)``; pass one to reuse it across masks (it shares
    the model's maskers). The masks are whatever the model's maskers decide on ``images``.
    """
    model.eval()
    engine = engine if engine is not None else convert(model, backend="torch")
    static, label = static_reference(model)
    static_cl = copy.deepcopy(static).to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    ratio = float(model(images, return_stats=True).stats.macs_ratio.mean())
    functions: dict[str, Callable[[], object]] = {
        "engine": lambda: engine(images),
        "static_nchw": lambda: static(images),
        "static_channels_last": lambda: static_cl(images_cl),
    }
    if measure_masked:
        functions["masked"] = lambda: model(images)
    times = fastest_in_blocks(functions, blocks=blocks, calls=calls, warmup=warmup, device=images.device)
    layout = "nchw" if times["static_nchw"] <= times["static_channels_last"] else "channels_last"
    log.debug("latencies (ms): %s", times)
    return LatencyComparison(
        engine_ms=times["engine"],
        masked_ms=times.get("masked"),
        static_ms=min(times["static_nchw"], times["static_channels_last"]),
        static_layout=layout,
        static_model=label,
        macs_ratio=ratio,
        batch=int(images.shape[0]),
        input_hw=(int(images.shape[-2]), int(images.shape[-1])),
        threads=torch.get_num_threads(),
        blocks=blocks,
        calls=calls,
    )
