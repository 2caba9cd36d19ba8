"""The primitive operations the sparse engine is written in, and the backends that run them.

The engine's block programs (:mod:`.bottleneck`) never call torch directly: they call the
primitives of a :class:`Kernels` backend. :class:`TorchKernels` runs each primitive as one
torch kernel (or as a free view); :class:`ShapeKernels` runs the same program on sizes only and
records each kernel as an :class:`EngineOp` — so what the latency predictor prices is, by
construction, what the engine executes. Every primitive names the ``role`` (the part of the
block) it serves.

Kinds of :class:`EngineOp` and their sizes (``dims``):

* ``matmul``: ``(m, k, n)``, an ``(m, k) @ (k, n)`` product (plus bias);
* ``grouped_matmul``: ``(groups, m, k, n)``, one such product per conv group (batched);
* ``conv`` / ``grouped_conv``: ``(batch, in_channels, out_channels, in_h, in_w, kernel, stride,
  groups)``, padding ``kernel // 2``, channels-last (grouped: RegNetY's conv2, other kernels);
* ``gather``: ``(rows, width)``, rows of an activation selected by index;
* ``slice``: ``(rows, width)``, the same on a parameter (channel-sliced weights and biases);
* ``scatter``: ``(rows, width)``, rows copied or added into a larger buffer by index;
* ``elementwise``: ``(elements,)``, one pass (activation, bias, copy, zeros, index arithmetic);
* ``reduce``: ``(elements_in, elements_out)``, a mean or a sum;
* ``max_pool``: ``(batch, channels, in_h, in_w)``, the 3×3 / 2 stem pool;
* ``spatial_masker``: ``(batch, in_channels, in_h, in_w, grid_h, grid_w, stride)``, the masker, its
  gate and the pixel masks derived from it (``grid`` 1×1: a whole-block gate);
* ``channel_masker``: ``(batch, in_channels, in_h, in_w, hidden, groups)``: pooling, the linear
  layers (``hidden`` 0 for a single layer) and the gate.

``count`` is how many times an operation runs per call, in expectation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..dynamic.geometry import grid_size
from ..models.blocks import BlockMasks
from ..models.structure import conv_output_hw
from .gather import GatherTables, gather_tables

OP_KINDS: tuple[str, ...] = (
    "matmul", "grouped_matmul", "conv", "grouped_conv", "gather", "slice", "scatter", "elementwise", "reduce",
    "max_pool", "spatial_masker", "channel_masker",
)
CONV_KINDS: tuple[str, ...] = ("conv", "grouped_conv")


def conv_kind(groups: int) -> str:
    """Dense and grouped convolutions run different kernels, so they are priced apart."""
    return "grouped_conv" if groups > 1 else "conv"


@dataclass(frozen=True)
class Traffic:
    """Values one operation reads (``inputs``: activations, ``weights``: parameters), values it
    writes (``outputs``) and rows it addresses by index (``rows``)."""

    inputs: int
    weights: int
    outputs: int
    rows: int = 0


@dataclass(frozen=True)
class EngineOp:
    """One primitive operation of the engine: its kind, the block part it serves, its sizes."""

    kind: str
    role: str
    dims: tuple[int, ...]
    count: float = 1.0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one execution (0 for data movement)."""
        if self.kind == "matmul":
            m, k, n = self.dims
            return m * k * n
        if self.kind == "grouped_matmul":
            g, m, k, n = self.dims
            return g * m * k * n
        if self.kind in CONV_KINDS:
            b, cin, cout, h, w, kernel, stride, groups = self.dims
            oh, ow = conv_output_hw((h, w), kernel, stride, kernel // 2)
            return b * oh * ow * cout * (cin // groups) * kernel * kernel
        return 0

    @property
    def traffic(self) -> Traffic:
        """The data one execution moves."""
        kind, d = self.kind, self.dims
        if kind == "matmul":
            m, k, n = d
            return Traffic(m * k, k * n, m * n)
        if kind == "grouped_matmul":
            g, m, k, n = d
            return Traffic(g * m * k, g * k * n, g * m * n)
        if kind in CONV_KINDS:
            b, cin, cout, h, w, kernel, stride, groups = d
            oh, ow = conv_output_hw((h, w), kernel, stride, kernel // 2)
            return Traffic(b * cin * h * w, cout * (cin // groups) * kernel * kernel, b * cout * oh * ow)
        if kind in ("gather", "scatter"):
            rows, width = d
            return Traffic(rows * width, 0, rows * width, rows)
        if kind == "slice":
            rows, width = d
            return Traffic(0, rows * width, rows * width, rows)
        if kind == "elementwise":
            return Traffic(d[0], 0, d[0])
        if kind == "reduce":
            return Traffic(d[0], 0, d[1])
        if kind == "max_pool":
            b, c, h, w = d
            oh, ow = conv_output_hw((h, w), 3, 2, 1)
            return Traffic(b * c * h * w, 0, b * c * oh * ow)
        if kind == "spatial_masker":
            b, cin, h, w = d[:4]
            return Traffic(b * cin * h * w, 2 * cin, b * h * w)
        if kind == "channel_masker":
            b, cin, h, w, hidden, groups = d
            weights = cin * hidden + hidden * 2 * groups if hidden else cin * 2 * groups
            return Traffic(b * cin * h * w, weights, b * groups)
        raise ValueError(f"unknown operation kind {kind!r}; known kinds are {', '.join(OP_KINDS)}")

    def times(self, count: float) -> "EngineOp":
        return replace(self, count=self.count * count)


class Kernels:
    """The primitives block programs are written in (see :class:`TorchKernels` for their meaning).

    ``rows`` are 2-D ``(positions, channels)`` matrices: a channels-last feature map of ``b``
    images of ``h × w`` is ``b·h·w`` rows. Data-dependent answers (:meth:`nonzero`, :meth:`all`,
    :meth:`unique_rows`, :meth:`size`) let a program decide what to compute.
    """


class TorchKernels(Kernels):
    """Runs every primitive as one torch kernel; views cost nothing."""

    # -- decisions ----------------------------------------------------------------------------------
    @staticmethod
    def compute_masks(role: str, program: Any, x: torch.Tensor) -> Any:
        """The block's own maskers on its input (so the engine decides as the model does)."""
        return program.source.compute_masks(x)

    @staticmethod
    def gather_tables(batch: int, hw: tuple[int, int], stride: int, like: torch.Tensor) -> GatherTables:
        return gather_tables(batch, hw, stride, like.device)

    # -- views ------------------------------------------------------------------------------------
    @staticmethod
    def rows(image: torch.Tensor) -> torch.Tensor:
        """A channels-last ``(B, C, H, W)`` map as ``(B·H·W, C)`` rows (a view)."""
        return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1])

    @staticmethod
    def image(rows: torch.Tensor, batch: int, hw: Sequence[int]) -> torch.Tensor:
        """``(B·H·W, C)`` rows as a channels-last ``(B, C, H, W)`` map (a view)."""
        return rows.view(batch, hw[0], hw[1], rows.shape[1]).permute(0, 3, 1, 2)

    @staticmethod
    def view(x: torch.Tensor, *shape: int) -> torch.Tensor:
        return x.view(*shape)

    @staticmethod
    def t(x: torch.Tensor) -> torch.Tensor:
        return x.t()

    @staticmethod
    def narrow(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
        return x.narrow(dim, start, length)

    @staticmethod
    def expand(x: torch.Tensor, *shape: int) -> torch.Tensor:
        return x.expand(*shape)

    @staticmethod
    def every(x: torch.Tensor, step: int) -> torch.Tensor:
        """Every ``step``-th element of a vector (a view)."""
        return x[::step]

    @staticmethod
    def size(x: torch.Tensor, dim: int = 0) -> int:
        return int(x.shape[dim])

    # -- products ---------------------------------------------------------------------------------
    @staticmethod
    def addmm(role: str, bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``bias + a @ w``."""
        return torch.addmm(bias, a, w)

    @staticmethod
    def addmm_into(role: str, out: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> None:
        """``out += a @ w`` in place (``out`` may be a view)."""
        torch.addmm(out, a, w, out=out)  # not addmm_: torch's flop counter skips in-place variants

    @staticmethod
    def baddbmm(role: str, bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``bias + a @ w`` per leading index (one product per conv group)."""
        return torch.baddbmm(bias, a, w)

    @staticmethod
    def conv2d(role: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, stride: int, padding: int,
               groups: int = 1) -> torch.Tensor:
        return F.conv2d(x, w, bias, stride, padding, 1, groups)

    # -- data movement ------------------------------------------------------------------------------
    @staticmethod
    def index_select(role: str, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows (``dim`` 0) or columns of an activation (a gather) or a parameter (a slice)."""
        return x.index_select(dim, index)

    @staticmethod
    def index_add_(role: str, out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``out[index] += values`` along dim 0, in place."""
        return out.index_add_(0, index, values)

    @staticmethod
    def index_copy_(role: str, out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``out[index] = values`` along dim 0, in place."""
        return out.index_copy_(0, index, values)

    @staticmethod
    def zeros(role: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
        return like.new_zeros(shape)

    @staticmethod
    def pad_image_rows(role: str, rows: torch.Tensor, batch: int, hw: Sequence[int]) -> torch.Tensor:
        """Rows of ``batch`` maps zero-padded by one pixel on every side: ``(B·(H+2)·(W+2), C)``."""
        return F.pad(rows.view(batch, hw[0], hw[1], -1), (0, 0, 1, 1, 1, 1)).view(-1, rows.shape[1])

    @staticmethod
    def strided_rows(role: str, image: torch.Tensor, stride: int) -> torch.Tensor:
        """The rows of every ``stride``-th position of a channels-last map (a copy)."""
        return TorchKernels.rows(image[:, :, ::stride, ::stride])

    @staticmethod
    def channels_last(role: str, x: torch.Tensor) -> torch.Tensor:
        """An NCHW image batch in channels-last memory (a copy)."""
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def group_rows(role: str, cols: torch.Tensor, groups: int, group_width: int) -> torch.Tensor:
        """Windows ``(N, 9, groups·gw)`` as ``(groups, N, 9·gw)`` (a copy when there are several groups)."""
        n = cols.shape[0]
        return cols.view(n, 9, groups, group_width).permute(2, 0, 1, 3).reshape(groups, n, 9 * group_width)

    @staticmethod
    def ungroup_rows(role: str, out: torch.Tensor) -> torch.Tensor:
        """``(groups, N, gw)`` products back to ``(N, groups·gw)`` rows (a copy unless one of them is 1)."""
        groups, n, gw = out.shape
        return out.permute(1, 0, 2).reshape(n, groups * gw)

    # -- element-wise -------------------------------------------------------------------------------
    @staticmethod
    def relu_(role: str, x: torch.Tensor) -> torch.Tensor:
        return x.relu_()

    @staticmethod
    def sigmoid_(role: str, x: torch.Tensor) -> torch.Tensor:
        return x.sigmoid_()

    @staticmethod
    def add_(role: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.add_(y)

    @staticmethod
    def mul(role: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y

    @staticmethod
    def div(role: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x / y

    @staticmethod
    def to_float(role: str, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    # -- indices --------------------------------------------------------------------------------------
    @staticmethod
    def nonzero(role: str, x: torch.Tensor) -> torch.Tensor:
        """Flat indices of the non-zero elements (data-dependent size)."""
        return x.reshape(-1).nonzero().view(-1)

    @staticmethod
    def positive(role: str, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1) > 0

    @staticmethod
    def all(role: str, x: torch.Tensor) -> bool:
        return bool(x.all())

    @staticmethod
    def item(role: str, x: torch.Tensor) -> int:
        return int(x)

    @staticmethod
    def unique_rows(role: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct rows and, per row, the index of its distinct row."""
        return torch.unique(x, dim=0, return_inverse=True)

    @staticmethod
    def equal(role: str, x: torch.Tensor, value: int) -> torch.Tensor:
        return x == value

    @staticmethod
    def arange(role: str, like: torch.Tensor, n: int) -> torch.Tensor:
        return torch.arange(n, device=like.device)

    @staticmethod
    def scale_add(role: str, x: torch.Tensor, scale: int, offset: torch.Tensor) -> torch.Tensor:
        """``x[:, None] * scale + offset`` flattened (channel indices of channel groups)."""
        return (x[:, None] * scale + offset).view(-1)

    @staticmethod
    def floordiv(role: str, x: torch.Tensor, d: int) -> torch.Tensor:
        return x // d

    @staticmethod
    def remainder(role: str, x: torch.Tensor, d: int) -> torch.Tensor:
        return x % d

    @staticmethod
    def mul_scalar(role: str, x: torch.Tensor, value: int) -> torch.Tensor:
        return x * value

    @staticmethod
    def add(role: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y

    @staticmethod
    def bincount(role: str, x: torch.Tensor, length: int) -> torch.Tensor:
        return torch.bincount(x, minlength=length)

    # -- reductions and pooling -------------------------------------------------------------------
    @staticmethod
    def mean(role: str, x: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool = False) -> torch.Tensor:
        return x.mean(dim=dim, keepdim=keepdim)

    @staticmethod
    def max_pool2d(role: str, x: torch.Tensor) -> torch.Tensor:
        """The stem's 3×3 / 2 max pool."""
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class RecordingKernels(TorchKernels):
    """:class:`TorchKernels` that also leave each block's statistics in the model's block (``last_stats``),
    as the masked model does: what detection's evaluation and sparsity reports read."""

    @staticmethod
    def compute_masks(role: str, program: Any, x: torch.Tensor) -> Any:
        masks = program.source.compute_masks(x)
        program.source.last_stats = program.source.statistics(masks, x)
        return masks


@dataclass(frozen=True)
class Shape:
    """A tensor of :class:`ShapeKernels`: its sizes, whether it is a parameter, and what the
    scenario's data-dependent answers need: which decision a mask holds (``tag``), the share of
    the batch's samples it covers (``fraction``), or its own count of non-zero elements (``known``)."""

    dims: tuple[int, ...]
    param: bool = False
    tag: str = ""
    fraction: float = 1.0
    known: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dims


@dataclass(frozen=True)
class Scenario:
    """The data-dependent answers a block program gets when it is priced instead of run.

    ``nonzero`` maps a tag (what a mask holds: ``conv3``, ``conv1``, ``gate``, ``channels``,
    ``members``) to how many of its elements are non-zero; ``all_on`` the tags whose masks are all
    on; ``distinct`` how many different channel masks a batch holds.
    """

    nonzero: tuple[tuple[str, int], ...] = ()
    all_on: tuple[str, ...] = ()
    distinct: int = 1

    def count(self, mask: Shape) -> int:
        """Non-zero elements of ``mask``: its own count, else the scenario's for its tag and share."""
        if mask.known is not None:
            return mask.known
        counts = dict(self.nonzero)
        if mask.tag not in counts:
            raise ValueError(f"the scenario has no count for {mask.tag!r} masks")
        return round(counts[mask.tag] * mask.fraction)


class ShapeKernels(Kernels):
    """Runs a block program on sizes only and records the kernels :class:`TorchKernels` would run.

    Each torch kernel is one :class:`EngineOp`; views record nothing. Data-dependent answers
    come from a :class:`Scenario`.
    """

    def __init__(self, scenario: Scenario = Scenario()) -> None:
        self.scenario = scenario
        self.ops: list[EngineOp] = []

    def _record(self, kind: str, role: str, *dims: int) -> None:
        self.ops.append(EngineOp(kind, role, tuple(int(d) for d in dims)))

    def _pass(self, role: str, elements: int) -> None:
        self._record("elementwise", role, elements)

    # -- decisions ----------------------------------------------------------------------------------
    def compute_masks(self, role: str, program: Any, x: Shape) -> BlockMasks:
        """The maskers' cost (one composite operation each) and masks of the right sizes."""
        block, spec = program.shape, program.shape.spec
        b, cin, h, w = x.dims
        out_hw = conv_output_hw((h, w), 3, block.stride, 1)
        cells = conv1 = conv3 = groups = channel = None
        if spec.has_spatial:
            grid = (1, 1) if spec.mode == "layer" else grid_size(out_hw, spec.spatial_granularity)
            self._record("spatial_masker", role, b, cin, h, w, *grid, block.stride)
            cells = Shape((b, 1, *grid))
            if grid == (1, 1):  # one decision per sample
                conv1 = conv3 = Shape((b, 1, 1, 1), tag="gate")
            else:
                conv1, conv3 = Shape((b, 1, h, w), tag="conv1"), Shape((b, 1, *out_hw), tag="conv3")
        if spec.has_channel:
            sizes = block.channel_masker_sizes()
            hidden = sizes[0][1] if len(sizes) == 2 else 0
            self._record("channel_masker", role, b, cin, h, w, hidden, block.channel_groups)
            groups, channel = Shape((b, block.channel_groups), tag="channels"), Shape((b, block.width))
        return BlockMasks(cells, conv1, conv3, groups, channel)

    @staticmethod
    def gather_tables(batch: int, hw: tuple[int, int], stride: int, like: Shape) -> SimpleNamespace:
        out_hw = conv_output_hw(hw, 3, stride, 1)
        return SimpleNamespace(padded=Shape((batch * hw[0] * hw[1],)), windows=Shape((batch * out_hw[0] * out_hw[1], 9)),
                               rows=batch * (hw[0] + 2) * (hw[1] + 2))

    # -- views ------------------------------------------------------------------------------------
    @staticmethod
    def rows(image: Shape) -> Shape:
        b, c, h, w = image.dims
        return replace(image, dims=(b * h * w, c))

    @staticmethod
    def image(rows: Shape, batch: int, hw: Sequence[int]) -> Shape:
        return replace(rows, dims=(batch, rows.dims[1], hw[0], hw[1]))

    @staticmethod
    def view(x: Shape, *shape: int) -> Shape:
        dims = list(shape)
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            dims[dims.index(-1)] = x.numel // known if known else 0
        return replace(x, dims=tuple(dims))

    @staticmethod
    def t(x: Shape) -> Shape:
        return replace(x, dims=tuple(reversed(x.dims)))

    @staticmethod
    def narrow(x: Shape, dim: int, start: int, length: int) -> Shape:
        dims = list(x.dims)
        fraction = x.fraction * length / dims[dim] if dim == 0 and dims[0] else x.fraction
        dims[dim] = length
        return replace(x, dims=tuple(dims), fraction=fraction)

    @staticmethod
    def expand(x: Shape, *shape: int) -> Shape:
        return replace(x, dims=tuple(s if s != -1 else d for s, d in zip(shape, x.dims)))

    @staticmethod
    def every(x: Shape, step: int) -> Shape:
        return replace(x, dims=(math.ceil(x.dims[0] / step),))

    @staticmethod
    def size(x: Shape, dim: int = 0) -> int:
        return x.dims[dim]

    # -- products ---------------------------------------------------------------------------------
    def addmm(self, role: str, bias: Shape, a: Shape, w: Shape) -> Shape:
        self._record("matmul", role, a.dims[0], a.dims[1], w.dims[1])
        return Shape((a.dims[0], w.dims[1]))

    def addmm_into(self, role: str, out: Shape, a: Shape, w: Shape) -> None:
        self._record("matmul", role, a.dims[0], a.dims[1], w.dims[1])

    def baddbmm(self, role: str, bias: Shape, a: Shape, w: Shape) -> Shape:
        g, m, k = a.dims
        self._record("grouped_matmul", role, g, m, k, w.dims[2])
        return Shape((g, m, w.dims[2]))

    def conv2d(self, role: str, x: Shape, w: Shape, bias: Shape, stride: int, padding: int, groups: int = 1) -> Shape:
        b, cin, h, wd = x.dims
        cout, kernel = w.dims[0], w.dims[2]
        self._record(conv_kind(groups), role, b, cin, cout, h, wd, kernel, stride, groups)
        oh, ow = conv_output_hw((h, wd), kernel, stride, padding)
        return Shape((b, cout, oh, ow))

    # -- data movement ------------------------------------------------------------------------------
    def index_select(self, role: str, x: Shape, dim: int, index: Shape) -> Shape:
        n = index.numel
        before, after = math.prod(x.dims[:dim]), math.prod(x.dims[dim + 1:])
        self._record("slice" if x.param else "gather", role, before * n, after)
        dims = list(x.dims)
        fraction = x.fraction * n / dims[0] if dim == 0 and dims[0] else x.fraction
        dims[dim] = n
        return Shape(tuple(dims), tag=x.tag, fraction=fraction)

    def index_add_(self, role: str, out: Shape, index: Shape, values: Shape) -> Shape:
        self._record("scatter", role, index.numel, math.prod(values.dims[1:]))
        return out

    def index_copy_(self, role: str, out: Shape, index: Shape, values: Shape) -> Shape:
        self._record("scatter", role, index.numel, math.prod(values.dims[1:]))
        return out

    def zeros(self, role: str, like: Shape, *shape: int) -> Shape:
        out = Shape(tuple(shape))
        self._pass(role, out.numel)
        return out

    def pad_image_rows(self, role: str, rows: Shape, batch: int, hw: Sequence[int]) -> Shape:
        out = Shape((batch * (hw[0] + 2) * (hw[1] + 2), rows.dims[1]))
        self._pass(role, out.numel)
        return out

    def strided_rows(self, role: str, image: Shape, stride: int) -> Shape:
        b, c, h, w = image.dims
        out = Shape((b * math.ceil(h / stride) * math.ceil(w / stride), c))
        self._pass(role, out.numel)
        return out

    def channels_last(self, role: str, x: Shape) -> Shape:
        self._pass(role, x.numel)
        return x

    def group_rows(self, role: str, cols: Shape, groups: int, group_width: int) -> Shape:
        n = cols.dims[0]
        if groups > 1:
            self._pass(role, cols.numel)
        return Shape((groups, n, 9 * group_width))

    def ungroup_rows(self, role: str, out: Shape) -> Shape:
        groups, n, gw = out.dims
        if groups > 1 and n > 1:
            self._pass(role, out.numel)
        return Shape((n, groups * gw))

    # -- element-wise -------------------------------------------------------------------------------
    def _unary(self, role: str, x: Shape) -> Shape:
        self._pass(role, x.numel)
        return replace(x, param=False)

    def _binary(self, role: str, x: Shape, y: Shape) -> Shape:
        dims = tuple(torch.broadcast_shapes(x.dims, y.dims))
        self._pass(role, math.prod(dims))
        return replace(x, dims=dims, param=False)

    def relu_(self, role: str, x: Shape) -> Shape:
        return self._unary(role, x)

    def sigmoid_(self, role: str, x: Shape) -> Shape:
        return self._unary(role, x)

    def add_(self, role: str, x: Shape, y: Shape) -> Shape:
        self._pass(role, x.numel)
        return x

    def mul(self, role: str, x: Shape, y: Shape) -> Shape:
        return self._binary(role, x, y)

    def div(self, role: str, x: Shape, y: Shape) -> Shape:
        return self._binary(role, x, y)

    def to_float(self, role: str, x: Shape, like: Shape) -> Shape:
        return self._unary(role, x)

    # -- indices --------------------------------------------------------------------------------------
    def nonzero(self, role: str, x: Shape) -> Shape:
        self._pass(role, x.numel)
        return Shape((self.scenario.count(x),), tag=x.tag, fraction=x.fraction)

    def positive(self, role: str, x: Shape) -> Shape:
        return self._unary(role, replace(x, dims=(x.numel,)))

    def all(self, role: str, x: Shape) -> bool:
        self._pass(role, x.numel)
        self._pass(role, 1)  # the answer copied to the host
        return x.tag in self.scenario.all_on

    def item(self, role: str, x: Shape) -> int:
        self._pass(role, 1)
        return 0

    def unique_rows(self, role: str, x: Shape) -> tuple[Shape, Shape]:
        self._pass(role, x.numel)
        distinct, samples = self.scenario.distinct, x.dims[0]
        rows = replace(x, dims=(distinct, x.dims[1]), fraction=x.fraction * distinct / samples)  # one mask a row
        return rows, Shape((samples,), known=round(samples / distinct))

    def equal(self, role: str, x: Shape, value: int) -> Shape:
        return self._unary(role, x)

    def arange(self, role: str, like: Shape, n: int) -> Shape:
        self._pass(role, n)
        return Shape((n,))

    def scale_add(self, role: str, x: Shape, scale: int, offset: Shape) -> Shape:
        self._pass(role, x.numel)
        out = Shape((x.numel * offset.numel,))
        self._pass(role, max(out.numel, offset.numel))
        return out

    def floordiv(self, role: str, x: Shape, d: int) -> Shape:
        return self._unary(role, x)

    def remainder(self, role: str, x: Shape, d: int) -> Shape:
        return self._unary(role, x)

    def mul_scalar(self, role: str, x: Shape, value: int) -> Shape:
        return self._unary(role, x)

    def add(self, role: str, x: Shape, y: Shape) -> Shape:
        return self._binary(role, x, y)

    def bincount(self, role: str, x: Shape, length: int) -> Shape:
        """Rows per sample; priced as if every sample had rows."""
        self._pass(role, x.numel)
        return Shape((length,), known=length)

    # -- reductions and pooling -------------------------------------------------------------------
    def mean(self, role: str, x: Shape, dim: Any, keepdim: bool = False) -> Shape:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        kept = tuple(1 if i in dims else d for i, d in enumerate(x.dims))
        out = kept if keepdim else tuple(d for i, d in enumerate(x.dims) if i not in dims)
        self._record("reduce", role, x.numel, math.prod(out))
        return Shape(out)

    def max_pool2d(self, role: str, x: Shape) -> Shape:
        b, c, h, w = x.dims
        self._record("max_pool", role, b, c, h, w)
        oh, ow = conv_output_hw((h, w), 3, 2, 1)
        return Shape((b, c, oh, ow))
