"""Measuring the engine against the static network in the runtimes people deploy with, side by side.

The static network (torchvision's where the architecture is torchvision's) runs in eager PyTorch
(NCHW and channels-last), ONNX Runtime and OpenVINO; the engine in its backends. Everything is
timed in the same run, in sequential blocks, and the fastest call of each is reported
(:mod:`laudnet.timing`): a slow period of the machine slows every candidate alike, and no
runtime's thread pool spins while another runs (ONNX Runtime's spinning is also disabled).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from ..errors import UsageError
from ..models.backbone import DynamicBackbone
from ..models.registry import create_model
from ..timing import fastest_in_blocks
from .executor import convert
from .export import ort_session

log = logging.getLogger(__name__)

# Builder arguments that leave the backbone exactly torchvision's.
_TORCHVISION_NEUTRAL = {
    "mode", "spatial_granularity", "channel_granularity", "channel_mask_placement", "masker_layers",
    "masker_reduction", "num_classes",
}
STATIC_RUNTIMES: tuple[str, ...] = ("eager", "eager_channels_last", "onnxruntime", "openvino")
ENGINE_BACKENDS: tuple[str, ...] = ("onnxruntime", "torch")


def named_group(times: dict[str, float], prefix: str) -> dict[str, float]:
    """The latencies of the candidates timed as ``"{prefix}/{name}"``, keyed by ``name``."""
    return {k.split("/", 1)[1]: v for k, v in times.items() if k.startswith(f"{prefix}/")}


def fastest_name(latencies: dict[str, float]) -> str:
    """The name of the fastest candidate (e.g. the best static runtime: the baseline)."""
    return min(latencies, key=latencies.get)


@dataclass
class LatencyComparison:
    """Fastest latencies (ms per batch) of the static network and the engine, measured in one run.

    ``static`` maps each static runtime to its latency, ``engine`` each engine backend;
    ``macs_ratio`` is the realised dynamic / dense MACs on the timed images (mean over the batch).
    ``best_static`` names the fastest static runtime.
    """

    model: str
    static_model: str
    batch: int
    input_hw: tuple[int, int]
    threads: int
    macs_ratio: float
    static: dict[str, float]
    engine: dict[str, float]
    masked_ms: float | None = None
    blocks: int = 3
    calls: int = 5

    @property
    def best_static(self) -> str:
        return fastest_name(self.static)

    @property
    def static_ms(self) -> float:
        """The fastest static runtime's latency: the baseline."""
        return self.static[self.best_static]

    def engine_vs_static(self, backend: str = "onnxruntime") -> float:
        """Engine latency over the best static runtime's (compare with ``macs_ratio``, the ideal)."""
        return self.engine[backend] / self.static_ms

    def efficiency(self, backend: str = "onnxruntime") -> float:
        """Latency ratio over MACs ratio: 1 means the engine saves time in proportion to the work it skips."""
        return self.engine_vs_static(backend) / self.macs_ratio


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


def static_onnx(static: nn.Module, images: torch.Tensor, outputs: Sequence[str] = ("logits",)) -> bytes:
    """``static`` as an ONNX model (torch's exporter; any batch size), as a deployment would export it.

    ``outputs`` names the module's outputs (one for a classifier, one per stage for a feature extractor).
    """
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "static.onnx")
        torch.onnx.export(static, (images,), path, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=list(outputs), dynamic_axes={"images": {0: "batch"}})
        with open(path, "rb") as handle:
            return handle.read()


def openvino_runner(onnx_model: bytes, threads: int) -> Callable[[object], list]:
    """OpenVINO's CPU plugin (f32, latency hint) on an ONNX model: a function of a NumPy batch
    returning the outputs in order."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as handle:
            handle.write(onnx_model)
        compiled = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(array):
        result = request.infer({0: array})
        return [result[output] for output in compiled.outputs]

    return run


def static_functions(static: nn.Module, example: torch.Tensor, threads: int, runtimes: Sequence[str] = STATIC_RUNTIMES,
                     outputs: Sequence[str] = ("logits",)) -> dict[str, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """The static network in each runtime: a function of an image batch returning its outputs (CPU tensors).

    ``example`` (a batch like the ones to come) is what the ONNX export traces.
    """
    unknown = sorted(set(runtimes) - set(STATIC_RUNTIMES))
    if unknown:
        raise UsageError(f"unknown static runtime {', '.join(unknown)}; accepted: {', '.join(STATIC_RUNTIMES)}")

    def eager(module: nn.Module, memory_format: torch.memory_format):
        def run(x: torch.Tensor) -> list[torch.Tensor]:
            out = module(x.contiguous(memory_format=memory_format))
            return list(out.values()) if isinstance(out, dict) else [out]
        return run

    def numpy_runner(run_arrays: Callable[[object], list]):
        return lambda x: [torch.from_numpy(a) for a in run_arrays(x.detach().cpu().float().contiguous().numpy())]

    functions: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {}
    if "eager" in runtimes:
        functions["eager"] = eager(static, torch.contiguous_format)
    if "eager_channels_last" in runtimes:
        functions["eager_channels_last"] = eager(copy.deepcopy(static).to(memory_format=torch.channels_last),
                                                 torch.channels_last)
    if {"onnxruntime", "openvino"} & set(runtimes):
        exported = static_onnx(static, example, outputs)
        if "onnxruntime" in runtimes:
            session = ort_session(exported, threads)
            functions["onnxruntime"] = numpy_runner(lambda array: session.run(None, {"images": array}))
        if "openvino" in runtimes:
            functions["openvino"] = numpy_runner(openvino_runner(exported, threads))
    return functions


def static_runners(static: nn.Module, images: torch.Tensor, threads: int,
                   runtimes: Sequence[str] = STATIC_RUNTIMES) -> dict[str, Callable[[], object]]:
    """A call of the static classifier in each runtime on ``images``."""
    return {name: partial(fn, images) for name, fn in static_functions(static, images, threads, runtimes).items()}


@torch.no_grad()
def compare_latency(
    model: DynamicBackbone,
    images: torch.Tensor,
    *,
    backends: Sequence[str] = ENGINE_BACKENDS,
    runtimes: Sequence[str] = STATIC_RUNTIMES,
    measure_masked: bool = False,
    warmup: int = 2,
    calls: int = 5,
    blocks: int = 3,
) -> LatencyComparison:
    """Time the engine's ``backends``, the static network in ``runtimes`` (and the masked model) on ``images``,
    side by side (``blocks`` rounds of ``calls`` timed calls each, after ``warmup`` calls per block).

    The masks are whatever the model's maskers decide on ``images``.
    """
    model.eval()
    threads = torch.get_num_threads()
    static, label = static_reference(model)
    functions = {f"static/{name}": fn for name, fn in static_runners(static, images, threads, runtimes).items()}
    for backend in backends:
        engine = convert(model, backend=backend, threads=threads)
        engine(images)  # builds the ONNX Runtime session for this input size
        functions[f"engine/{backend}"] = lambda engine=engine: engine(images)
    if measure_masked:
        functions["masked"] = lambda: model(images)
    ratio = float(model(images, return_stats=True).stats.macs_ratio.mean())
    times = fastest_in_blocks(functions, blocks=blocks, calls=calls, warmup=warmup, device=images.device)
    log.debug("latencies (ms): %s", times)
    return LatencyComparison(
        model=getattr(model, "name", type(model).__name__),
        static_model=label,
        batch=int(images.shape[0]),
        input_hw=(int(images.shape[-2]), int(images.shape[-1])),
        threads=threads,
        macs_ratio=ratio,
        static=named_group(times, "static"),
        engine=named_group(times, "engine"),
        masked_ms=times.get("masked"),
        blocks=blocks,
        calls=calls,
    )
