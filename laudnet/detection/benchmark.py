"""A detector on the sparse engine against the same detector on the best static backbone runtime.

Two measurements in one run, each in sequential blocks (:mod:`laudnet.timing`):

* the backbone alone on the padded batch the detector's transform makes: the static network's
  stages (torchvision's ResNet where the architecture is torchvision's) in eager PyTorch, ONNX
  Runtime and OpenVINO, against the engine's stages;
* the whole detector (transform, backbone, FPN, heads, post-processing) with the fastest static
  backbone runtime in place of its backbone, against the detector on the engine. The FPN and the
  heads are the detector's own, in eager PyTorch, in both.

The whole detector can at most save ``(1 - macs_ratio) × backbone time``; :attr:`ideal_saved`
says how much of that it does save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models._utils import IntermediateLayerGetter

from ..sparse.benchmark import STATIC_RUNTIMES, fastest_name, named_group, static_functions, static_reference
from ..timing import fastest_in_blocks
from .models import laud_backbone
from .sparse import convert_detector, with_backbone_engine

STAGE_OUTPUTS: tuple[str, ...] = ("c2", "c3", "c4", "c5")


@dataclass
class DetectorLatencyComparison:
    """Fastest latencies (ms per batch) of a detector and its backbone, static and on the engine.

    ``backbone_static`` maps each static runtime to the backbone's latency on the padded batch,
    ``backbone_engine`` each engine backend; ``detector_static`` is the whole detector with the
    fastest static backbone runtime (``best_static``), ``detector_engine`` the detector on each
    engine backend. ``macs_ratio`` is the backbone's realised dynamic / dense MACs (batch mean).
    """

    detector: str
    backbone: str
    static_model: str
    batch: int
    input_hw: tuple[int, int]
    threads: int
    macs_ratio: float
    backbone_static: dict[str, float]
    backbone_engine: dict[str, float]
    detector_static: float
    detector_engine: dict[str, float]

    @property
    def best_static(self) -> str:
        return fastest_name(self.backbone_static)

    @property
    def backbone_static_ms(self) -> float:
        return self.backbone_static[self.best_static]

    def backbone_efficiency(self, backend: str = "onnxruntime") -> float:
        """Backbone latency ratio (engine / best static) over the MACs ratio; 1 is proportional savings."""
        return self.backbone_engine[backend] / self.backbone_static_ms / self.macs_ratio

    def ideal_saved(self, backend: str = "onnxruntime") -> float:
        """The detector's time saved over what the backbone's MACs ratio would save at best."""
        return (self.detector_static - self.detector_engine[backend]) / ((1 - self.macs_ratio) * self.backbone_static_ms)


class StaticStages(nn.Module):
    """The static network's stem and four stages: a function of images returning the stage outputs."""

    def __init__(self, static: nn.Module) -> None:
        super().__init__()
        self.static = static
        self.torchvision = isinstance(static, ResNet)
        if self.torchvision:
            self.getter = IntermediateLayerGetter(static, {f"layer{i}": name for i, name in enumerate(STAGE_OUTPUTS, 1)})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.torchvision:
            return list(self.getter(x).values())
        return self.static.forward_features(x).features


class _FunctionStages(nn.Module):
    """A backbone-engine stand-in for :class:`~laudnet.detection.models.LaudFPN`: stage outputs from a
    function (a static runtime), no statistics."""

    records_stats = False

    def __init__(self, function: Callable[[torch.Tensor], list[torch.Tensor]]) -> None:
        super().__init__()
        self.function = function

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.function(x)


def compare_detector_latency(detector: nn.Module, images: list[torch.Tensor], **options) -> DetectorLatencyComparison:
    """Time one detector (from :func:`~laudnet.detection.build_detector`) on ``images``: its backbone
    static and on the engine, then the whole detector (options as :func:`compare_detectors_latency`)."""
    return compare_detectors_latency({"detector": detector}, images, **options)["detector"]


@torch.no_grad()
def compare_detectors_latency(
    detectors: Mapping[str, nn.Module],
    images: list[torch.Tensor],
    *,
    backends: Sequence[str] = ("onnxruntime",),
    runtimes: Sequence[str] = STATIC_RUNTIMES,
    backbone_timing: tuple[int, int] = (3, 3),
    detector_timing: tuple[int, int] = (2, 2),
    warmup: int = 1,
) -> dict[str, DetectorLatencyComparison]:
    """Time detectors of one architecture (e.g. one per dynamic mode) on ``images`` against one static
    baseline, the first detector's static twin: first every backbone, then every whole detector.

    ``backbone_timing`` and ``detector_timing`` are (blocks, calls per block); the masks are what each
    backbone's maskers decide on the batch.
    """
    detectors = {name: detector.eval() for name, detector in detectors.items()}
    first = next(iter(detectors.values()))
    threads = torch.get_num_threads()
    batch = first.transform(images)[0].tensors
    static, label = static_reference(laud_backbone(first).body)
    static_fns = static_functions(StaticStages(static).eval(), batch, threads, runtimes, outputs=STAGE_OUTPUTS)
    functions: dict[str, Callable[[], object]] = {f"static/{k}": (lambda fn=fn: fn(batch)) for k, fn in static_fns.items()}
    converted = {}
    for name, detector in detectors.items():
        for backend in backends:
            converted[name, backend] = convert_detector(detector, backend=backend, threads=threads)
            engine = laud_backbone(converted[name, backend]).engine
            engine.features(batch)  # an ONNX Runtime session is built per input size, on first use
            functions[f"engine/{name}/{backend}"] = lambda engine=engine: engine.features(batch)
    blocks, calls = backbone_timing
    backbone = fastest_in_blocks(functions, blocks=blocks, calls=calls, warmup=warmup)
    static_ms = named_group(backbone, "static")
    static_detector = with_backbone_engine(first, _FunctionStages(static_fns[fastest_name(static_ms)]))
    whole: dict[str, Callable[[], object]] = {"static": lambda: static_detector(images)}
    whole.update({f"engine/{name}/{backend}": (lambda c=c: c(images)) for (name, backend), c in converted.items()})
    blocks, calls = detector_timing
    times = fastest_in_blocks(whole, blocks=blocks, calls=calls, warmup=warmup)
    results = {}
    for name, detector in detectors.items():
        fpn = laud_backbone(detector)
        fpn(batch)
        results[name] = DetectorLatencyComparison(
            detector=type(detector).__name__,
            backbone=getattr(fpn.body, "name", type(fpn.body).__name__),
            static_model=label,
            batch=len(images),
            input_hw=(int(batch.shape[-2]), int(batch.shape[-1])),
            threads=threads,
            macs_ratio=float(fpn.last_stats.macs_ratio.mean()),
            backbone_static=static_ms,
            backbone_engine={b: backbone[f"engine/{name}/{b}"] for b in backends},
            detector_static=times["static"],
            detector_engine={b: times[f"engine/{name}/{b}"] for b in backends},
        )
    return results
