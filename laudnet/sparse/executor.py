"""The sparse inference engine on torch: a LAUD model that computes only what its masks select.

:func:`convert` turns a LAUD-ResNet / LAUD-RegNetY into a :class:`SparseModel` with the same
logits as ``model.eval()``. Each block runs the model's own maskers (``block.compute_masks``), so
the decisions are identical, and then its :class:`~.bottleneck.BottleneckProgram`; the stem and
the head are the :class:`StemHeadProgram`. Both are written in the primitives of
:mod:`.kernels`, so the latency predictor prices exactly these programs
(:mod:`.plan`). The code is device-neutral (CPU or CUDA, no custom kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UsageError
from ..models.backbone import DynamicBackbone
from ..models.family import family_of
from ..models.structure import ModelShape
from .bottleneck import SparseBlock
from .folding import fold_conv_bn
from .kernels import Kernels, RecordingKernels, Shape, TorchKernels


@dataclass(frozen=True)
class StemHeadConfig:
    """The stem's folded conv (and whether the 3×3 / 2 max pool follows) and the classifier."""

    stem_stride: int
    stem_padding: int
    stem_pool: bool


class StemHeadProgram:
    """The model's stem (input made channels-last, folded conv, ReLU, [max pool]) and head (global
    average pooling, classifier), in kernel primitives; ``p`` holds the weights."""

    def __init__(self, config: StemHeadConfig, weights: Any) -> None:
        self.c = config
        self.p = weights

    def stem(self, k: Kernels, x: Any) -> Any:
        x = k.conv2d("stem", k.channels_last("stem", x), self.p.stem_weight, self.p.stem_bias, self.c.stem_stride,
                     self.c.stem_padding)
        x = k.relu_("stem", x)
        return k.max_pool2d("stem", x) if self.c.stem_pool else x

    def head(self, k: Kernels, x: Any) -> Any:
        return k.addmm("head", self.p.fc_bias, k.mean("head", x, (2, 3)), k.t(self.p.fc_weight))

    @classmethod
    def of_shape(cls, shape: ModelShape) -> "StemHeadProgram":
        """The program of a model shape, with :class:`~.kernels.Shape` weights (for pricing)."""
        (conv,) = shape.stem
        weights = SimpleNamespace(
            stem_weight=Shape((conv.out_channels, conv.in_channels, conv.kernel, conv.kernel), param=True),
            stem_bias=Shape((conv.out_channels,), param=True),
            fc_weight=Shape((shape.head.out_channels, shape.head.in_channels), param=True),
            fc_bias=Shape((shape.head.out_channels,), param=True),
        )
        return cls(StemHeadConfig(conv.stride, conv.kernel // 2, shape.stem_pool is not None), weights)


class SparseModel(nn.Module):
    """Inference-only LAUD model that skips the work its masks switch off (see :func:`convert`)."""

    def __init__(self, model: DynamicBackbone, kernels: Kernels | None = None) -> None:
        super().__init__()
        stem = family_of(model).stem(model)
        if stem.pool is not None and (stem.pool.kernel_size, stem.pool.stride, stem.pool.padding) != (3, 2, 1):
            raise UsageError(f"the sparse engine supports a 3x3 / 2 stem pool, got {stem.pool}")
        weight, bias = fold_conv_bn(stem.conv, stem.norm)
        self.register_buffer("stem_weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("stem_bias", bias)
        head = family_of(model).head(model)
        self.register_buffer("fc_weight", head.weight.detach().clone())
        self.register_buffer("fc_bias", head.bias.detach().clone())
        self.program = StemHeadProgram(
            StemHeadConfig(stem.conv.stride[0], stem.conv.padding[0], stem.pool is not None), self)
        self.blocks = nn.ModuleList(SparseBlock(block) for _, block in model.named_dynamic_blocks())
        self.kernels = kernels if kernels is not None else TorchKernels()
        self.name = getattr(model, "name", type(model).__name__)

    @property
    def records_stats(self) -> bool:
        """Whether each run leaves the blocks' statistics in the model (:class:`~.kernels.RecordingKernels`)."""
        return isinstance(self.kernels, RecordingKernels)

    def train(self, mode: bool = True) -> "SparseModel":
        if mode:
            raise UsageError("SparseModel is inference-only: train the LAUD model and convert it again")
        return super().train(False)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output (channels-last) for images ``x`` of shape ``(B, 3, H, W)``: what a detector's
        feature pyramid reads."""
        k = self.kernels
        x = self.program.stem(k, x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(k, x)
            if i + 1 == len(self.blocks) or self.blocks[i + 1].source.stage != block.source.stage:
                outputs.append(x)
        return outputs

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(B, 3, H, W)``, any layout."""
        k = self.kernels
        x = self.program.stem(k, x)
        for block in self.blocks:
            x = block(k, x)
        return self.program.head(k, x)


BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "triton")

# Converters of models that are not CNN backbones (detectors, other families): (accepts, build).
_CONVERTERS: list[tuple[Callable[[nn.Module], bool], Callable[..., nn.Module]]] = []


def register_converter(accepts: Callable[[nn.Module], bool], build: Callable[..., nn.Module]) -> None:
    """Let :func:`convert` build the engine of models ``accepts`` recognises with ``build(model, backend, threads)``."""
    _CONVERTERS.append((accepts, build))


def check_backend(backend: str) -> None:
    """Refuse a backend name the engine does not have (one line naming the accepted ones)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")


def resolve_backend(model: nn.Module, backend: str, gpu_backend: str) -> str:
    """``backend`` checked, with ``auto`` resolved: ``gpu_backend`` for a model on a GPU, ``onnxruntime``
    on the CPU (which refuses a model on a GPU)."""
    check_backend(backend)
    on_gpu = next(model.parameters()).is_cuda
    if backend == "auto":
        return gpu_backend if on_gpu else "onnxruntime"
    if backend == "onnxruntime" and on_gpu:
        raise UsageError("the onnxruntime backend runs on the CPU; move the model to the CPU or use "
                         f"backend={gpu_backend!r}")
    return backend


def convert(model: nn.Module, backend: str = "auto", threads: int | None = None) -> nn.Module:
    """Build the sparse engine of a LAUD model (trained or not); same logits as ``model.eval()``.

    Detectors built by :func:`laudnet.detection.build_detector` convert too (their backbone runs on
    the engine). ``backend``: ``torch`` (this module: any device, plain torch operations), ``onnxruntime``
    (the graph of :mod:`.lowering` in an ONNX Runtime session on the CPU, built per input size, with
    ``threads`` threads), ``triton`` (CUDA kernels, :mod:`.triton`) or ``auto``: ``triton`` for a
    model on a GPU, ``onnxruntime`` on the CPU. The model is switched to eval mode and keeps
    ownership of its maskers, which the torch and Triton engines share so that their decisions are
    the model's; convert again after changing weights. Raises
    :class:`~laudnet.errors.UsageError` for a model the engine cannot run exactly (e.g.
    ``channel_mask_placement="before_bn"``).
    """
    check_backend(backend)
    from . import vit  # noqa: F401  (registers the LAUD-ViT engine; imported here, it imports this module)

    for accepts, build in _CONVERTERS:
        if accepts(model):
            return build(model, backend, threads)
    if not isinstance(model, DynamicBackbone):
        raise UsageError(f"convert: expected a LAUD model or a detector with a LAUD backbone, got {type(model).__name__}")
    backend = resolve_backend(model, backend, "triton")
    model.eval()
    if backend == "onnxruntime":
        from .export import OrtEngine

        return OrtEngine(model, threads=threads).eval()
    if backend == "triton":
        from .triton import TritonKernels

        return SparseModel(model, TritonKernels()).eval()
    return SparseModel(model).eval()
