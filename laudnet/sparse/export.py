"""A LAUD model as one ONNX file with the skipping inside, and the engine that runs it in ONNX Runtime.

:func:`export_onnx` lowers the sparse engine of a model to ONNX (:mod:`.lowering`), runs the file in
ONNX Runtime on the example input, refuses it if the logits differ from the masked model's, and
only then writes it (atomically). :class:`OrtEngine` is the same graph in an in-memory ONNX Runtime
session: the sparse engine's CPU backend (``convert(model, backend="onnxruntime")``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import UsageError
from ..io import PathLike, atomic_open, check_writable
from ..models.backbone import DynamicBackbone
from ..models.structure import model_shape
from ..models.vit import LaudViT
from .blocked import keep_blocked
from .executor import SparseModel
from .lowering import INPUT, OUTPUT, lower

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-4  # largest |difference| of the logits, relative to their largest magnitude


def session_options(threads: int | None = None, profile: bool = False, layout: bool = True):
    """ONNX Runtime settings for latency: a fixed thread pool that does not spin after a call (a spinning
    pool slows whatever runs next on a small machine), every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ``layout``: ONNX Runtime's blocked-layout convolutions (the fast ones; they pad channels to a block).
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    options.enable_profiling = profile
    if profile:  # the profile is a file; under the temporary folder, not wherever the user runs from
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "laudnet_ort_profile")
    return options


def ort_session(model: onnx.ModelProto | bytes | PathLike, threads: int | None = None, profile: bool = False,
                layout: bool = True):
    """An ONNX Runtime CPU session of ``model`` (see :func:`session_options`)."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(source, os.PathLike):
        source = str(source)
    return ort.InferenceSession(source, session_options(threads, profile, layout), providers=["CPUExecutionProvider"])


def executed_nodes(graph: onnx.ModelProto, images: torch.Tensor) -> list[dict]:
    """The nodes ONNX Runtime runs for ``images`` (``If`` branches included), as its profiler records
    them: ``name``, ``op_name``, input and output shapes."""
    session = ort_session(graph, threads=1, profile=True, layout=False)
    session.run([OUTPUT], {INPUT: images.detach().cpu().float().contiguous().numpy()})
    return [e["args"] | {"name": e["name"]} for e in profile_events(session) if e.get("cat") == "Node"]


def profile_events(session) -> list[dict]:
    """The events of a profiling ``session`` (:func:`ort_session` with ``profile``), in time order,
    after ending its profile (the file is removed): every ``model_run``, and every node's kernel with
    its ``name`` (the node's) and ``args`` (``op_name``, input and output shapes)."""
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    os.unlink(handle.name)
    kept = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith(KERNEL_SUFFIX):
            kept.append(event | {"name": event["name"].removesuffix(KERNEL_SUFFIX)})
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            kept.append(event)
    return sorted(kept, key=lambda e: e["ts"])


KERNEL_SUFFIX = "_kernel_time"  # ONNX Runtime's profile names a node's kernel event after the node


def profiled_shapes(args: dict, key: str) -> list[tuple[int, ...]]:
    """The shapes a profile event records (``key``: ``input_type_shape`` or ``output_type_shape``)."""
    return [tuple(int(v) for v in next(iter(entry.values()))) for entry in args.get(key, [])]


def executed_macs(graph: onnx.ModelProto, images: torch.Tensor) -> int:
    """The multiply-accumulates ONNX Runtime executes for ``images``: every convolution and product
    node that ran, from the shapes its profiler records."""
    return sum(_node_macs(node) for node in executed_nodes(graph, images))


def _node_macs(args: dict) -> int:
    op = args["op_name"]
    shapes, outputs = profiled_shapes(args, "input_type_shape"), profiled_shapes(args, "output_type_shape")
    if op in ("Conv", "FusedConv"):
        weight = shapes[1]
        return math.prod(outputs[0]) * math.prod(weight[1:])
    if op in ("Gemm", "FusedGemm"):
        return math.prod(outputs[0]) * (shapes[0][1] if args.get("transA", "0") == "0" else shapes[0][0])
    if op in ("MatMul", "FusedMatMul"):
        return math.prod(outputs[0]) * shapes[0][-1]
    return 0


@dataclass(frozen=True)
class ExportCheck:
    """How the exported graph's logits compare with the masked model's on the example input, and the
    input the graph takes (``graph_input``, e.g. ``batch x 3 x 224 x 224``)."""

    max_abs_error: float
    relative_error: float
    graph_input: str


def export_model(model: DynamicBackbone, example_input: torch.Tensor, batch: int | None = None) -> onnx.ModelProto:
    """The ONNX graph of ``model`` for inputs of ``example_input``'s size (``batch`` ``None``: any batch
    where the model allows it, else 1)."""
    if example_input.dim() != 4 or example_input.shape[1] != 3:
        raise UsageError(f"example input: expected a (B, 3, H, W) batch of images, got shape {tuple(example_input.shape)}")
    engine = SparseModel(model.eval())
    return lower(engine, (int(example_input.shape[2]), int(example_input.shape[3])), batch)


def check_export(graph: onnx.ModelProto, model: DynamicBackbone, example_input: torch.Tensor) -> ExportCheck:
    """Run ``graph`` in ONNX Runtime on ``example_input`` and compare with the masked model's logits."""
    with torch.no_grad():
        want = model.eval()(example_input).cpu().numpy()
    got = ort_session(graph).run([OUTPUT], {INPUT: example_input.detach().cpu().float().numpy()})[0]
    if got.shape != want.shape:
        raise UsageError(f"the exported graph returned logits of shape {got.shape}, the model {want.shape}")
    error = float(np.abs(got - want).max())
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    described = " x ".join(d.dim_param or str(d.dim_value) for d in dims)
    return ExportCheck(error, error / max(float(np.abs(want).max()), 1e-12), described)


def export_onnx(model: DynamicBackbone, path: PathLike, example_input: torch.Tensor,
                batch: int | None = None) -> ExportCheck:
    """Write ``model`` (a LAUD CNN or ViT) as an ONNX file whose graph decides the masks and computes only
    the selected work.

    The file is checked in ONNX Runtime on ``example_input`` first (relative logit error at most
    :data:`EXPORT_TOLERANCE`) and written atomically only if it passes; a path that cannot be written
    fails before anything is built.
    """
    if isinstance(model, LaudViT):
        from .vit_onnx import export_vit_onnx

        return export_vit_onnx(model, path, example_input, batch)
    check_writable(path)
    example_input = example_input[:1] if batch == 1 else example_input
    graph = export_model(model, example_input, batch)
    return write_checked(graph, model, example_input[:1] if fixed_batch(graph) == 1 else example_input, path)


def write_checked(graph: onnx.ModelProto, model: nn.Module, example: torch.Tensor, path: PathLike) -> ExportCheck:
    """Run ``graph`` in ONNX Runtime on ``example`` against ``model`` and write it (atomically) to ``path``
    only if the relative logit error is at most :data:`EXPORT_TOLERANCE`."""
    check = check_export(graph, model, example)
    if not check.relative_error <= EXPORT_TOLERANCE:
        raise UsageError(f"the exported graph's logits differ from the model's by {check.relative_error:.2e} "
                         f"(relative; allowed {EXPORT_TOLERANCE:g}): not written")
    with atomic_open(path, "wb") as handle:
        handle.write(graph.SerializeToString())
    log.debug("wrote %s (relative logit error %.1e on the example)", path, check.relative_error)
    return check


def fixed_batch(graph: onnx.ModelProto) -> int | None:
    """The graph's fixed batch size, or ``None`` when any batch is accepted."""
    dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def image_feeds(images: np.ndarray, batch: int | None) -> list[dict[str, np.ndarray]]:
    """The session calls that run ``images`` through a graph of :func:`fixed_batch` ``batch``: one for
    a graph of any batch size, one per image for the engine's graphs of a fixed batch (of one)."""
    if batch is None:
        return [{INPUT: images}]
    return [{INPUT: images[i:i + 1]} for i in range(images.shape[0])]


def engine_graph(model: DynamicBackbone, input_hw: tuple[int, int], threads: int | None = None,
                 features: bool = False) -> onnx.ModelProto:
    """The graph :class:`OrtEngine` runs for images of ``input_hw``: the lowered engine
    (:func:`~.lowering.lower`) as ONNX Runtime optimises it for ``threads``, blocked layout kept
    across ``If`` boundaries (:func:`~.blocked.keep_blocked`); load it with ``layout=False``. For
    any batch size, or for one image at a time (:func:`one_image_at_a_time`)."""
    batch = 1 if one_image_at_a_time(model, input_hw) else None
    return keep_blocked(lower(SparseModel(model), input_hw, batch, features=features, portable=False), threads)


# Activation elements (of one image's largest block output) from which a model with layer gates runs
# one image at a time: ResNet-50's at 448² (256 × 112²). Measured here (two threads, one image per call
# against the batch graph, same run): at 800×1216, 2 images at gate density 0.5 take 1196 against
# 1420 ms, every gate on 1892 against 1880 ms; ResNet-50 at 224² (256 × 56²), 8 images at density 0.5
# 256 against 249 ms, every gate on 394 against 320 ms (small images convolve faster as a batch).
ONE_IMAGE_ACTIVATION = 256 * 112 * 112


def one_image_at_a_time(model: DynamicBackbone, input_hw: tuple[int, int]) -> bool:
    """Whether the engine's graph takes one image at a time: a model with layer gates (one decision
    per image) whose largest activation holds at least :data:`ONE_IMAGE_ACTIVATION` elements per image.

    The batch graph runs such a block, when it runs for some images only, on those images and their
    shortcut gathered, then scattered back into a copy of the batch: passes over the activation that
    one image at a time does not make (each image runs its branch or not), for a few more calls'
    overhead, which small models feel more. Channel masks take one image at a time in any case
    (:func:`~.lowering.lower`)."""
    shape = model_shape(model, input_hw)
    gated = any(b.spec.mode == "layer" for b in shape.blocks)
    largest = max(b.out_channels * b.out_hw[0] * b.out_hw[1] for b in shape.blocks)
    return gated and largest >= ONE_IMAGE_ACTIVATION


class OrtEngine(nn.Module):
    """A LAUD model's sparse engine run by ONNX Runtime on the CPU.

    The maskers decide inside the graph. Its session runs ONNX Runtime's blocked layout across the
    graph's ``If`` boundaries (:func:`~.blocked.keep_blocked`). A graph is built for each input size the engine meets
    (on first use; :func:`export_onnx` builds one and checks it): for any batch size, or for one image
    at a time where the model needs it (channel masks) or runs faster so (:func:`one_image_at_a_time`).
    It records no block statistics (the masks stay in the graph).
    """

    records_stats = False

    def __init__(self, model: DynamicBackbone, threads: int | None = None) -> None:
        super().__init__()
        self._model = (model.eval(),)  # not a submodule: the engine holds no parameters of its own
        self.threads = threads
        self.name = getattr(model, "name", type(model).__name__)
        self._sessions: dict[tuple[tuple[int, int], bool], tuple[object, int | None]] = {}

    def session(self, input_hw: tuple[int, int], features: bool = False):
        """The ONNX Runtime session for images of ``input_hw`` (built on first use) and its fixed batch."""
        key = (input_hw, features)
        if key not in self._sessions:
            graph = engine_graph(self._model[0], input_hw, self.threads, features)
            self._sessions[key] = (ort_session(graph, self.threads, layout=False), fixed_batch(graph))
        return self._sessions[key]

    def _run(self, x: torch.Tensor, features: bool) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise UsageError(f"expected a (B, 3, H, W) batch of images, got shape {tuple(x.shape)}")
        session, batch = self.session((int(x.shape[2]), int(x.shape[3])), features)
        array = x.detach().cpu().float().contiguous().numpy()
        results = [session.run(None, feed) for feed in image_feeds(array, batch)]
        return [torch.from_numpy(np.concatenate(parts)) for parts in zip(*results)]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output (NCHW) for images ``x`` of shape ``(B, 3, H, W)``."""
        return self._run(x, features=True)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(B, 3, H, W)``."""
        return self._run(x, features=False)[0]
