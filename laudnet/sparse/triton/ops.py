"""The Triton kernels of the sparse engine and their launchers.

* :func:`product` — one kernel for every matrix product and convolution of a block: ``A @ B``
  per conv group, A's rows gathered through an index table (``taps`` entries a row: a conv1 row
  gather, or the 9 buffer rows of a 3×3 window — an implicit GEMM over selected windows) or read
  from an image with implicit zero padding (a dense convolution as an implicit GEMM); B read
  through strides (any weight layout, fp32 weights cast in the kernel), the active channels' rows
  (or conv groups) read in place through their index; fp32 accumulation; the
  epilogue adds the bias, applies ReLU and stores or adds into rows, or into rows named by an
  index (conv1 into its zero-padded buffer, conv3 into the shortcut).
* :func:`index_select` — rows (or columns) copied by index: activation rows a product does not
  read in place, conv2's taps of the active channels, sub-batches.
* :func:`scatter` — rows stored or added (atomically: indices may repeat) into rows named by an index.

Launches are counted in :data:`LAUNCHES` by what they read and how they write.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

LAUNCHES: Counter[str] = Counter()
"""Kernel launches since import, e.g. ``windows>scatter_add`` (what a product reads > how it writes),
and ``sliced_weights``: products reading channel-sliced weights in place (tests and profiles read it)."""


# Sizes are not specialised (rows vary with the masks): one compiled kernel per layout, not per shape.
@triton.jit(do_not_specialize=["M", "N", "C", "K", "TAPS", "H", "W", "OW", "OHW", "KW", "STRIDE", "PAD"])
def _product_kernel(
    a_ptr, a_index_ptr, w_ptr, w_g_index_ptr, w_k_index_ptr, w_n_index_ptr, bias_ptr, bias_index_ptr,
    out_ptr, out_index_ptr, M, N, C, K, TAPS,
    sa_r, sa_c, H, W, OW, OHW, sa_b, sa_h, sa_w, KW, STRIDE, PAD,
    sw_g, sw_t, sw_c, sw_n, so_r, so_c,
    IMAGE: tl.constexpr, GATHER: tl.constexpr, G_INDEXED: tl.constexpr, K_INDEXED: tl.constexpr,
    N_INDEXED: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_INDEXED: tl.constexpr, RELU: tl.constexpr,
    SCATTER: tl.constexpr, ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[rows m, columns g·N + n] (+)= relu?(bias + Σ_k A_g[m, k] · B_g[k, n]), k = tap·C + channel;
    B's conv groups, input channels or output channels (and the bias) possibly read through index tables."""
    g = tl.program_id(2)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    if IMAGE:  # output position of each row, and the corner of its window in the input
        b = rm // OHW
        p = rm - b * OHW
        oy = p // OW
        iy0 = oy * STRIDE - PAD
        ix0 = (p - oy * OW) * STRIDE - PAD
        row_off = b * sa_b + iy0 * sa_h + ix0 * sa_w
    if N_INDEXED:  # selected output channels: whole rows of the weights
        w_cols = tl.load(w_n_index_ptr + g * N + rn, mask=n_ok, other=0) * sw_n
    elif G_INDEXED:  # selected conv groups
        w_cols = tl.load(w_g_index_ptr + g) * sw_g + rn * sw_n
    else:
        w_cols = g * sw_g + rn * sw_n
    dot_type = out_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        t = rk // C
        c = rk - t * C
        a_ok = m_ok[:, None] & k_ok[None, :]
        a_col = (g * C + c) * sa_c
        if IMAGE:
            ty = t // KW
            tx = t - ty * KW
            iy = iy0[:, None] + ty[None, :]
            ix = ix0[:, None] + tx[None, :]
            a_ok = a_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            a_off = row_off[:, None] + (ty * sa_h + tx * sa_w + a_col)[None, :]
        elif GATHER:
            row = tl.load(a_index_ptr + rm[:, None] * TAPS + t[None, :], mask=a_ok, other=0)
            a_off = row * sa_r + a_col[None, :]
        else:
            a_off = (rm * sa_r)[:, None] + a_col[None, :]
        a = tl.load(a_ptr + a_off, mask=a_ok, other=0.0).to(dot_type)
        if K_INDEXED:  # selected input channels: whole rows of the weights (one tap)
            w_rows = tl.load(w_k_index_ptr + c, mask=k_ok, other=0) * sw_c
        else:
            w_rows = t * sw_t + c * sw_c
        w_off = w_rows[:, None] + w_cols[None, :]
        w = tl.load(w_ptr + w_off, mask=k_ok[:, None] & n_ok[None, :], other=0.0).to(dot_type)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        if BIAS_INDEXED:
            b_off = tl.load(bias_index_ptr + g * N + rn, mask=n_ok, other=0)
        else:
            b_off = g * N + rn
        acc += tl.load(bias_ptr + b_off, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if SCATTER:
        out_row = tl.load(out_index_ptr + rm, mask=m_ok, other=0)
    else:
        out_row = rm
    o_off = out_row[:, None] * so_r + (g * N + rn)[None, :] * so_c
    o_ok = m_ok[:, None] & n_ok[None, :]
    if ACCUMULATE:  # rows are distinct within a launch: a plain read-add-write
        acc += tl.load(out_ptr + o_off, mask=o_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=o_ok)


@triton.jit(do_not_specialize=["ROWS", "n"])
def _gather_kernel(src_ptr, index_ptr, out_ptr, ROWS, n, R, INNER,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[o, j, :] = src[o, index[j], :] for src ``(outer, R, INNER)``, out ``(outer, n, INNER)``, contiguous."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = r < ROWS
    outer = r // n
    src_row = outer * R + tl.load(index_ptr + (r - outer * n), mask=r_ok, other=0)
    ok = r_ok[:, None] & (cols < INNER)[None, :]
    values = tl.load(src_ptr + src_row[:, None] * INNER + cols[None, :], mask=ok)
    tl.store(out_ptr + r[:, None] * INNER + cols[None, :], values, mask=ok)


@triton.jit(do_not_specialize=["n"])
def _scatter_kernel(values_ptr, index_ptr, out_ptr, n, WIDTH, sv_r, sv_c, so_r, so_c,
                    ACCUMULATE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[index[j], :] (+)= values[j, :]; additions are atomic, so indices may repeat."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = r < n
    ok = r_ok[:, None] & (cols < WIDTH)[None, :]
    dest = tl.load(index_ptr + r, mask=r_ok, other=0)
    values = tl.load(values_ptr + r[:, None] * sv_r + cols[None, :] * sv_c, mask=ok)
    values = values.to(out_ptr.dtype.element_ty)
    o_off = dest[:, None] * so_r + cols[None, :] * so_c
    if ACCUMULATE:
        tl.atomic_add(out_ptr + o_off, values, mask=ok)
    else:
        tl.store(out_ptr + o_off, values, mask=ok)


@dataclass(frozen=True)
class Rows:
    """A product's left operand read as rows of a 2-D ``data``: row ``m``, column ``t·C + c`` (taps and C are the weights') of
    conv group ``g`` is ``data[index[m·taps + t], g·C + c]`` (``data[m, g·C + c]`` without index)."""

    data: Tensor
    count: int
    index: Tensor | None = None


@dataclass(frozen=True)
class Image:
    """A convolution's input ``(B, C, H, W)`` in any layout, read as im2col rows (zero outside the
    image): one row per output position, ``out_hw`` of them per image."""

    data: Tensor
    stride: int
    padding: int
    out_hw: tuple[int, int]

    @property
    def count(self) -> int:
        return self.data.shape[0] * self.out_hw[0] * self.out_hw[1]


@dataclass(frozen=True)
class Weights:
    """A product's right operand per conv group ``g``: element ``(t·C + c, n)`` at
    ``data + g·strides[0] + t·strides[1] + c·strides[2] + n·strides[3]``, where ``g``, ``c`` and
    ``g·N + n`` go through ``g_index``, ``k_index`` and ``n_index`` when given (channel-sliced
    weights read in place: the selected rows are contiguous)."""

    data: Tensor
    groups: int
    taps: int
    width: int  # C: input channels per tap and group
    columns: int  # N: output channels per group
    strides: tuple[int, int, int, int]
    kernel_w: int = 1  # taps per row of a convolution's window
    g_index: Tensor | None = None
    k_index: Tensor | None = None
    n_index: Tensor | None = None

    @classmethod
    def matrix(cls, w: Tensor, taps: int = 1, *, g_index: Tensor | None = None, k_index: Tensor | None = None,
               n_index: Tensor | None = None) -> Weights:
        """``(K, N)``, or ``(G, K, N)`` per conv group, with ``K = taps·C``; ``g_index`` selects conv
        groups, ``k_index`` rows (one tap), ``n_index`` columns."""
        grouped = w.dim() == 3
        sg, sk, sn = (w.stride() if grouped else (0, *w.stride()))
        k = w.shape[-2] if k_index is None else k_index.numel()
        groups = (w.shape[0] if grouped else 1) if g_index is None else g_index.numel()
        n = w.shape[-1] if n_index is None else n_index.numel()
        return cls(w, groups, taps, k // taps, n, (sg, k // taps * sk, sk, sn), 1, g_index, k_index, n_index)

    @classmethod
    def conv(cls, w: Tensor, groups: int, n_index: Tensor | None = None) -> Weights:
        """Conv weights ``(out, in/groups, kh, kw)`` whose taps are evenly strided (contiguous or
        channels-last); ``n_index`` selects output channels."""
        out, width, kh, kw = w.shape
        so, si, sy, sx = w.stride()
        if sy != kw * sx:
            raise ValueError(f"conv weights with strides {w.stride()}: the taps of a window are not evenly strided")
        n = (out if n_index is None else n_index.numel()) // groups
        return cls(w, groups, kh * kw, width, n, (n * so, sx, si, so), kw, n_index=n_index)


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def _product_blocks(m: int, n: int, k: int) -> tuple[int, int, int, int]:
    """Tile sizes and warps: on a GPU 64-128 tiles; the interpreter runs tiles one by one in numpy,
    so there the tiles are as large as the product."""
    if triton.knobs.runtime.interpret:
        return _pow2(m, 16, 256), _pow2(n, 16, 256), _pow2(k, 16, 128), 1
    block_m = 128 if m >= 4096 else _pow2(m, 16, 64)
    block_n = _pow2(n, 16, 128 if m >= 256 else 64)
    warps = 8 if block_m * block_n >= 128 * 128 else 4
    return block_m, block_n, 32, warps


def product(out: Tensor, a: Rows | Image, w: Weights, bias: Tensor | None, *, bias_index: Tensor | None = None,
            relu: bool = False, out_index: Tensor | None = None, accumulate: bool = False, tf32: bool = False) -> None:
    """``out[rows] (+)= relu?(bias[bias_index] + a @ w)`` per conv group, into the 2-D ``out``: at rows
    ``0..M`` or at ``out_index``, columns ``g·N + n``; ``accumulate`` adds (the rows must be distinct).

    The product is computed in ``out``'s type (float32 products exact unless ``tf32``), accumulated in float32.
    """
    m, n, k = a.count, w.columns, w.taps * w.width
    if m == 0 or n == 0:
        return
    block_m, block_n, block_k, warps = _product_blocks(m, n, k)
    image = isinstance(a, Image)
    if image:
        x, (oh, ow) = a.data, a.out_hw
        sb, sc, sh, sw = x.stride()
        geometry = (0, sc, x.shape[2], x.shape[3], ow, oh * ow, sb, sh, sw, w.kernel_w, a.stride, a.padding)
        kind = "image"
    else:
        x = a.data
        geometry = (x.stride(0), x.stride(1), 0, 0, 1, 1, 0, 0, 0, 1, 1, 0)
        kind = "rows" if a.index is None else "windows" if w.taps > 1 else "gathered_rows"
    epilogue = {(False, False): "store", (False, True): "add", (True, False): "scatter", (True, True): "scatter_add"}[
        out_index is not None, accumulate]
    LAUNCHES[f"{kind}>{epilogue}"] += 1
    if bias_index is not None or any(i is not None for i in (w.g_index, w.k_index, w.n_index)):
        LAUNCHES["sliced_weights"] += 1
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), w.groups)
    def pointer(t: Tensor | None) -> Tensor:  # an unused pointer stands in for an absent table
        return out if t is None else t

    _product_kernel[grid](
        x, pointer(None if image else a.index), w.data, pointer(w.g_index), pointer(w.k_index), pointer(w.n_index),
        pointer(bias), pointer(bias_index), out, pointer(out_index),
        m, n, w.width, k, w.taps, *geometry, *w.strides, out.stride(0), out.stride(1),
        IMAGE=image, GATHER=not image and a.index is not None, G_INDEXED=w.g_index is not None,
        K_INDEXED=w.k_index is not None, N_INDEXED=w.n_index is not None, HAS_BIAS=bias is not None,
        BIAS_INDEXED=bias_index is not None, RELU=relu,
        SCATTER=out_index is not None, ACCUMULATE=accumulate,
        PRECISION="ieee" if out.dtype == torch.float32 and not tf32 else "tf32",  # 16-bit operands ignore it
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )


def _copy_blocks(rows: int, width: int) -> tuple[int, int]:
    if triton.knobs.runtime.interpret:
        return _pow2(rows, 1, 1024), _pow2(width, 1, 1024)
    block_c = _pow2(width, 1, 128)
    return max(1, 4096 // block_c), block_c


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """``x.index_select(dim, index)`` for a contiguous ``x``, or samples (``dim`` 0) of a channels-last batch."""
    channels_last = x.dim() == 4 and dim == 0 and not x.is_contiguous()
    src = (x.permute(0, 2, 3, 1) if channels_last else x).contiguous()  # channels-last: a view, no copy
    shape = list(src.shape)
    n, r, inner = index.numel(), shape[dim], math.prod(shape[dim + 1:])
    shape[dim] = n
    out = src.new_empty(shape)
    rows = math.prod(shape[:dim + 1])
    if rows and inner:
        LAUNCHES["gather"] += 1
        block_r, block_c = _copy_blocks(rows, inner)
        _gather_kernel[(triton.cdiv(rows, block_r), triton.cdiv(inner, block_c))](
            src, index, out, rows, n, r, inner, BLOCK_R=block_r, BLOCK_C=block_c)
    return out.permute(0, 3, 1, 2) if channels_last else out


def scatter(out: Tensor, index: Tensor, values: Tensor, accumulate: bool) -> None:
    """``out[index] (+)= values`` for 2-D ``out`` and ``values`` (any strides, e.g. an expanded bias)."""
    n, width = values.shape
    if n == 0 or width == 0:
        return
    LAUNCHES["scatter_add" if accumulate else "scatter"] += 1
    block_r, block_c = _copy_blocks(n, width)
    _scatter_kernel[(triton.cdiv(n, block_r), triton.cdiv(width, block_c))](
        values, index, out, n, width, *values.stride(), *out.stride(),
        ACCUMULATE=accumulate, BLOCK_R=block_r, BLOCK_C=block_c)
