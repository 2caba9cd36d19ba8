"""The sparse engine's primitives on Triton kernels, fused through deferred values.

:class:`TritonKernels` runs the same block programs as :class:`~laudnet.sparse.kernels.TorchKernels`
(so the latency predictor still prices what runs). Its products, convolutions, gathers and
scatters of activations and weights are the kernels of :mod:`.ops`; two primitives return
*deferred* values, which let the next primitive fuse into the launch:

* a row selection (``index_select`` on dim 0) is a :class:`Gather`: as a product's left operand
  it is read through its index (conv1 on the rows conv2 reads; conv2's im2col windows of the
  zero-padded buffer, taps and conv groups included; the projection's strided rows), as its
  weights or bias too (the active channels' rows, contiguous in the weights' layout, read in place);
* a product or convolution is a :class:`Product`: ``relu_`` becomes its epilogue, and the scatter
  that consumes it takes its rows in the epilogue (conv1 into the zero-padded buffer, conv3 into
  the shortcut).

Anything else launches a deferred value into a new tensor (once: views share it). A deferred value
reads its inputs when it launches; the block programs consume each one before writing to what it
reads (their own rule: a branch reads its samples before adding to them).

Torch still runs what is not block work or is a single pass anyway: the maskers and index
building (masks, ``nonzero``, tables), zero fills, the stem's max pool, means and the remaining
element-wise passes (residual ReLU, squeeze-excitation's sigmoid and scale, conv3's bias on the dense
path).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ...errors import UsageError
from ..gather import gather_tables
from ..kernels import TorchKernels
from . import ops

Tensor = torch.Tensor

FUSED_SCATTERS: tuple[str, ...] = ("conv1", "scatter_add", "batch")
"""Roles whose scatter is a product's only use, so the scatter runs in the product's epilogue:
conv1 into its zero-padded buffer, a branch into the shortcut (distinct rows)."""


@dataclass
class _Result:
    """What the views of one deferred value share: its launched rows, and whether ReLU follows."""

    rows: Tensor | None = None
    relu: bool = False


@dataclass(frozen=True)
class Gather:
    """Rows ``index`` of the contiguous ``source`` (not copied yet), seen with ``shape``."""

    source: Tensor
    index: Tensor
    shape: tuple[int, ...]
    result: _Result = field(default_factory=_Result)

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    def value(self) -> Tensor:
        if self.result.rows is None:
            self.result.rows = ops.index_select(self.source, 0, self.index)
        return self.result.rows.view(self.shape)

    @property
    def selects_rows(self) -> bool:
        """Whether it is seen as the selected rows themselves (not viewed otherwise)."""
        return tuple(self.shape) == (self.index.numel(), *self.source.shape[1:])


@dataclass(frozen=True)
class Transposed:
    """The transpose of a selection of rows of a matrix (conv1's and SE's weights of the active channels)."""

    rows: Gather

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.rows.shape))

    def value(self) -> Tensor:
        return self.rows.value().t()


@dataclass(frozen=True)
class Grouped:
    """Gathered windows ``(N, 9, groups·gw)`` seen as ``(groups, N, 9·gw)``, for a grouped conv2."""

    cols: Gather
    groups: int
    group_width: int

    @property
    def dtype(self) -> torch.dtype:
        return self.cols.dtype

    @property
    def device(self) -> torch.device:
        return self.cols.device

    @property
    def shape(self) -> tuple[int, ...]:
        return self.groups, self.cols.shape[0], 9 * self.group_width

    def value(self) -> Tensor:
        return TorchKernels.group_rows("conv2", self.cols.value(), self.groups, self.group_width)


@dataclass(frozen=True)
class Product:
    """A product or convolution not launched yet, whose rows are ``(M, groups·N)``; ``shape`` says
    how they are seen: as rows (2-D), per conv group ``(G, M, N)`` or as a channels-last image (4-D)."""

    a: ops.Rows | ops.Image
    w: ops.Weights
    bias: Tensor | None
    bias_index: Tensor | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    tf32: bool
    result: _Result = field(default_factory=_Result)

    @property
    def device(self) -> torch.device:
        return self.a.data.device

    @property
    def pending(self) -> bool:
        return self.result.rows is None

    def launch(self, out: Tensor, index: Tensor | None = None, accumulate: bool = False) -> None:
        """Run the product into the 2-D ``out`` (at rows ``index`` if given, adding if ``accumulate``)."""
        ops.product(out, self.a, self.w, self.bias, bias_index=self.bias_index, relu=self.result.relu,
                    out_index=index, accumulate=accumulate, tf32=self.tf32)

    def value(self) -> Tensor:
        if self.result.rows is None:
            rows = torch.empty(self.a.count, self.w.groups * self.w.columns, dtype=self.dtype, device=self.device)
            self.launch(rows)
            self.result.rows = rows
        rows = self.result.rows
        if len(self.shape) == 3:
            return rows.view(self.shape[1], self.shape[0], self.shape[2]).permute(1, 0, 2)
        if len(self.shape) == 4:
            b, c, h, w = self.shape
            return rows.view(b, h, w, c).permute(0, 3, 1, 2)
        return rows


Deferred = (Gather, Transposed, Grouped, Product)


def value(x: Any) -> Any:
    """The tensor of a deferred value (launching it if needed); anything else unchanged."""
    return x.value() if isinstance(x, Deferred) else x


def _on_values(op: Callable[..., Any]) -> Callable[..., Any]:
    """A :class:`TorchKernels` primitive run on the values of its arguments."""

    def primitive(self: TritonKernels, *args: Any, **kwargs: Any) -> Any:
        return op(*(value(a) for a in args), **kwargs)

    primitive.__doc__ = op.__doc__
    return primitive


def _weights(w: Any, taps: int = 1) -> ops.Weights:
    """A product's weights; a selection of rows (conv3's and SE's active inputs, conv2's active conv
    groups) or the transpose of one (conv1's and SE's active outputs) is read in place through its index."""
    if isinstance(w, Transposed):
        return ops.Weights.matrix(w.rows.source.t(), n_index=w.rows.index)
    if isinstance(w, Gather) and w.selects_rows and (w.source.dim() == 3 or (w.source.dim() == 2 and taps == 1)):
        index = {"g_index" if w.source.dim() == 3 else "k_index": w.index}
        return ops.Weights.matrix(w.source, taps, **index)
    return ops.Weights.matrix(value(w), taps)


@functools.lru_cache(maxsize=256)
def _strided_positions(batch: int, hw: tuple[int, int], stride: int, device: torch.device) -> Tensor:
    """Row indices of every ``stride``-th position of ``batch`` channels-last maps."""
    h, w = hw
    image = torch.arange(batch, device=device)[:, None, None] * (h * w)
    ys = torch.arange(0, h, stride, device=device)[:, None] * w
    xs = torch.arange(0, w, stride, device=device)[None, :]
    return (image + ys + xs).reshape(-1)


def _sample_rows(samples: Tensor, per_sample: int) -> Tensor:
    """The rows of some samples of a batch whose samples have ``per_sample`` rows each."""
    return (samples[:, None] * per_sample + torch.arange(per_sample, device=samples.device)).view(-1)


class TritonKernels(TorchKernels):
    """Block work on Triton kernels (see the module docstring).

    ``dtype``: the activations' type (float32, float16 or bfloat16); weights stay float32 and are
    cast in the kernels, every product accumulates in float32. ``tf32`` lets float32 products use
    TF32 tensor cores (as cuDNN does by default); off, they are exact float32.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, tf32: bool = False) -> None:
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise UsageError(f"TritonKernels: dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.tf32 = tf32

    def _product(self, a: ops.Rows | ops.Image, w: ops.Weights, bias: Any, shape: tuple[int, ...]) -> Product:
        """A deferred product; a selected bias (of the active channels) is read through its index."""
        if isinstance(bias, Gather) and bias.source.dim() == 1:
            return Product(a, w, bias.source, bias.index, shape, self.dtype, self.tf32)
        return Product(a, w, None if bias is None else value(bias).reshape(-1), None, shape, self.dtype, self.tf32)

    # -- decisions ----------------------------------------------------------------------------------
    @staticmethod
    def compute_masks(role: str, program: Any, x: Any) -> Any:
        """The model's own (float32) maskers on the block input."""
        return program.source.compute_masks(value(x).float())

    # -- views ------------------------------------------------------------------------------------
    @staticmethod
    def rows(image: Any) -> Tensor:
        return TorchKernels.rows(value(image))

    @staticmethod
    def image(rows: Any, batch: int, hw: Sequence[int]) -> Any:
        """A pending product's rows stay deferred (a scatter may still take them)."""
        if isinstance(rows, Product) and rows.pending and len(rows.shape) == 2:
            return replace(rows, shape=(batch, rows.shape[1], hw[0], hw[1]))
        return TorchKernels.image(value(rows), batch, hw)

    @staticmethod
    def view(x: Any, *shape: int) -> Any:
        """Views of a gather stay deferred (conv2's windows are viewed before their product)."""
        if isinstance(x, Gather):
            known = math.prod(d for d in shape if d != -1)
            numel = math.prod(x.shape)
            return replace(x, shape=tuple(numel // known if d == -1 else d for d in shape))
        return value(x).view(*shape)

    @staticmethod
    def t(x: Any) -> Any:
        """The transpose of selected weight rows stays deferred (its product reads them in place)."""
        if isinstance(x, Gather) and x.source.dim() == 2 and x.selects_rows:
            return Transposed(x)
        return value(x).t()

    narrow = _on_values(TorchKernels.narrow)
    expand = _on_values(TorchKernels.expand)

    # -- products ---------------------------------------------------------------------------------
    def addmm(self, role: str, bias: Any, a: Any, w: Any) -> Any:
        """``bias + a @ w``, deferred; a gathered ``a`` is read through its index. The head's product
        (the model's output) launches at once."""
        if isinstance(a, Gather) and a.source.dim() == len(a.shape) == 2:
            operand, taps = ops.Rows(a.source, a.shape[0], a.index), a.index.numel() // a.shape[0]
        else:
            a = value(a)
            operand, taps = ops.Rows(a, a.shape[0]), 1
        weights = _weights(w, taps)
        out = self._product(operand, weights, bias, (operand.count, weights.columns))
        return out.value() if role == "head" else out

    def addmm_into(self, role: str, out: Any, a: Any, w: Any) -> None:
        """``out += a @ w`` in the product's epilogue."""
        a, weights = value(a), _weights(w)
        self._product(ops.Rows(a, a.shape[0]), weights, None, (a.shape[0], weights.columns)).launch(
            value(out), accumulate=True)

    def baddbmm(self, role: str, bias: Any, a: Grouped, w: Any) -> Product:
        """A grouped conv2 on gathered windows: one launch, a grid axis per conv group; the rows come
        out ungrouped ``(N, groups·gw)``."""
        n = a.cols.shape[0]
        weights = _weights(w, a.cols.index.numel() // n)
        return self._product(ops.Rows(a.cols.source, n, a.cols.index), weights, bias,
                             (weights.groups, n, weights.columns))

    def conv2d(self, role: str, x: Any, w: Any, bias: Any, stride: int, padding: int, groups: int = 1) -> Product:
        """An implicit-GEMM convolution of a channels-last (or any) image, deferred."""
        x = value(x)
        if isinstance(w, Gather) and w.source.dim() == 4 and w.selects_rows:  # active output channels, in place
            weights = ops.Weights.conv(w.source, groups, n_index=w.index)
        else:
            weights = ops.Weights.conv(value(w), groups)
        b, _, h, wd = x.shape
        kernel = w.shape[2]
        out_hw = ((h + 2 * padding - kernel) // stride + 1, (wd + 2 * padding - kernel) // stride + 1)
        return self._product(ops.Image(x, stride, padding, out_hw), weights, bias,
                             (b, weights.groups * weights.columns, *out_hw))

    # -- data movement ------------------------------------------------------------------------------
    def index_select(self, role: str, x: Any, dim: int, index: Tensor) -> Any:
        """Masks and index tables on torch; float rows of a contiguous tensor deferred as a
        :class:`Gather` (activation rows, weights of the active channels); other selections (taps'
        channels, sub-batches of a channels-last batch) by the gather kernel."""
        x = value(x)
        if role == "masker" or not x.dtype.is_floating_point:
            return x.index_select(dim, index)
        if dim == 0 and x.is_contiguous():
            return Gather(x, index, (index.numel(), *x.shape[1:]))
        return ops.index_select(x, dim, index)

    def _scatter(self, role: str, out: Any, index: Tensor, values: Any, accumulate: bool) -> Tensor:
        """``out[index] (+)= values``; samples of an image batch become their rows."""
        out = value(out)
        dest = out
        if out.dim() == 4:
            dest, index = TorchKernels.rows(out), _sample_rows(index, out.shape[2] * out.shape[3])
        if isinstance(values, Product) and values.pending and role in FUSED_SCATTERS:
            values.launch(dest, index, accumulate)
        else:
            values = value(values)
            ops.scatter(dest, index, TorchKernels.rows(values) if values.dim() == 4 else values, accumulate)
        return out

    def index_add_(self, role: str, out: Any, index: Tensor, values: Any) -> Tensor:
        return self._scatter(role, out, index, values, accumulate=True)

    def index_copy_(self, role: str, out: Any, index: Tensor, values: Any) -> Tensor:
        return self._scatter(role, out, index, values, accumulate=False)

    @staticmethod
    def zeros(role: str, like: Any, *shape: int) -> Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    def pad_image_rows(self, role: str, rows: Any, batch: int, hw: Sequence[int]) -> Tensor:
        """conv1's rows written straight into the zero-padded buffer (its epilogue scatters them)."""
        buffer = torch.zeros(batch * (hw[0] + 2) * (hw[1] + 2), rows.shape[1], dtype=rows.dtype, device=rows.device)
        self._scatter(role, buffer, gather_tables(batch, tuple(hw), 1, buffer.device).padded, rows, accumulate=False)
        return buffer

    @staticmethod
    def strided_rows(role: str, image: Any, stride: int) -> Gather:
        """Every ``stride``-th position, deferred: the projection's product reads them through an index."""
        x = value(image)
        b, c, h, w = x.shape
        index = _strided_positions(b, (h, w), stride, x.device)
        return Gather(TorchKernels.rows(x), index, (index.numel(), c))

    @staticmethod
    def channels_last(role: str, x: Tensor) -> Tensor:
        """No copy: the stem's convolution reads any layout (and casts to the engine's type)."""
        return x

    @staticmethod
    def group_rows(role: str, cols: Gather, groups: int, group_width: int) -> Grouped:
        return Grouped(cols, groups, group_width)

    @staticmethod
    def ungroup_rows(role: str, out: Product) -> Product:
        """Free: the grouped product's rows are already ``(N, groups·gw)``."""
        return replace(out, shape=(out.shape[1], out.shape[0] * out.shape[2]))

    # -- element-wise, reductions, pooling --------------------------------------------------------
    @staticmethod
    def relu_(role: str, x: Any) -> Any:
        """On a pending product, the product's epilogue (the block's output, role ``residual``, is
        launched then: it leaves the program)."""
        if isinstance(x, Product) and x.pending:
            x.result.relu = True
            return x.value() if role == "residual" else x
        return value(x).relu_()

    sigmoid_ = _on_values(TorchKernels.sigmoid_)
    add_ = _on_values(TorchKernels.add_)
    mul = _on_values(TorchKernels.mul)
    div = _on_values(TorchKernels.div)
    to_float = _on_values(TorchKernels.to_float)
    mean = _on_values(TorchKernels.mean)
    max_pool2d = _on_values(TorchKernels.max_pool2d)
