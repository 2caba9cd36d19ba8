"""Latency models of the operators of static and dynamic networks, in seconds per batch.

Every operator is a function of a :class:`~laudnet.latency.hardware.Hardware` and the
operator's shape. Its latency is the best over a search of tilings (output channels ×
rows × columns, and for patch-based kernels also the number of patches a PE handles at
once): for each tiling the model counts compute time (work per PE over lanes and clock,
divided by how well the tile fills the PE's pipelines, times the waves of tiles over the
PEs) and memory time (DRAM traffic plus the L2 traffic of every tile), and combines them
as the hardware's ``latency_mode`` says; each kernel adds one launch. The search is one
array expression over all tilings, and results are cached per (hardware, shape).

The formulas are those of the LAUDNet paper's simulator (arXiv 2308.15949), including its
conventions, such as choosing a patch kernel's tiling for the average number of active
patches and then running it on the actual number. Channel-masked kernels pay the load
imbalance of active channel groups across tiles, computed in expectation
(:func:`~laudnet.latency.tiles.peak_channel_density`) rather than sampled.

Densities are fractions in [0, 1]: ``in_density``/``out_density`` of input/output
channels computed, ``density`` of spatial patches (of ``granularity`` × ``granularity``
output pixels) computed. ``channel_group`` is the number of channels one channel-mask
entry switches.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..hardware import Hardware
from .tiles import fill_efficiency, peak_channel_density, tile_candidates, transaction_efficiency

CACHE_SIZE = 1 << 16
PATCH_BATCH_LIMIT = 1 << 8

Size = tuple[int, int]


def clear_caches() -> None:
    """Forget every cached search (e.g. to time a cold prediction)."""
    for function in _CACHED:
        function.cache_clear()


def _grid(*axes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Broadcastable views of the candidate axes, one dimension each."""
    return np.ix_(*axes)


def _combine(hw: Hardware, compute, memory):
    return compute + memory if hw.latency_mode == "add" else np.maximum(compute, memory)


def _waves(hw: Hardware, n_tiles):
    """Rounds needed to run ``n_tiles`` tiles on the PEs."""
    return np.ceil(n_tiles / hw.n_pes)


def _lane_time(hw: Hardware, operations, parallel_work):
    """Time for one PE to run ``operations`` when ``parallel_work`` of them are independent."""
    return operations / hw.frequency_hz / hw.lanes_per_pe / fill_efficiency(parallel_work, hw.peak_parallelism)


def _cells(granularity: int, size: Size) -> tuple[int, int]:
    """Rows and columns of ``granularity``-sized patches covering a ``size`` map."""
    return math.ceil(size[0] / granularity), math.ceil(size[1] / granularity)


def _active_patches(density: float, granularity: int, size: Size) -> int:
    rows, cols = _cells(granularity, size)
    return math.ceil(density * rows * cols)


def _mean_patches(granularity: int, size: Size) -> float:
    """The mean of the possible active-patch counts 1..N: what a patch kernel's tiling is chosen for."""
    rows, cols = _cells(granularity, size)
    return (rows * cols + 1) / 2


def _best_tiling(hw: Hardware, axes: tuple[np.ndarray, ...], compute, memory) -> tuple[float, ...]:
    """The candidate of each axis in the tiling with the lowest latency."""
    latency = _combine(hw, compute, memory)
    index = np.unravel_index(np.argmin(latency), latency.shape)
    return tuple(float(axis[i]) for axis, i in zip(axes, index))


def _tree_reduce(hw: Hardware, parallel, n_elements):
    """Time to sum ``n_elements`` values per lane group by pairwise halving, on one PE."""
    n = np.ceil(np.asarray(n_elements, dtype=np.float64) / 2)
    total = np.zeros(np.broadcast(n, parallel).shape)
    while np.any(n > 1):
        work = n * parallel
        step = np.ceil(work / hw.lanes_per_pe) / fill_efficiency(work, hw.peak_parallelism) / hw.frequency_hz
        total = total + np.where(n > 1, step, 0.0)
        n = np.ceil(n / 2)
    return total * hw.batch_size


# ---------------------------------------------------------------------------- dense


@lru_cache(maxsize=CACHE_SIZE)
def conv(
    hw: Hardware, cin: int, cout: int, out_size: Size, kernel: int, stride: int = 1, groups: int = 1,
    in_density: float = 1.0, out_density: float = 1.0, channel_group: int = 1,
) -> float:
    """A convolution over the whole map, computing ``in_density``/``out_density`` of its channels."""
    b = hw.batch_size
    out_h, out_w = out_size
    ct, ht, wt = _grid(tile_candidates(cout), tile_candidates(out_h), tile_candidates(out_w))
    n_tiles = np.ceil(cout / ct) * np.ceil(out_h / ht) * np.ceil(out_w / wt)
    cin_g, taps = cin // groups, kernel * kernel
    weight_share = in_density * out_density if b == 1 else 1.0
    tile_weight = ct * cin_g * taps * weight_share
    tile_input = np.ceil(ct / (cout // groups)) * cin_g * (ht + kernel - 1) * stride * (wt + kernel - 1) * stride
    tile_output = ct * ht * wt
    l2_words = (tile_weight + (tile_input * in_density + tile_output * out_density) * b) * n_tiles
    dram_words = cout * cin_g * taps * (out_density if b == 1 else 1.0) + b * (
        cin * out_h * stride * out_w * stride * in_density + cout * out_h * out_w * out_density
    )
    memory = dram_words / hw.dram_words_per_s + l2_words / hw.l2_words_per_s / transaction_efficiency(
        wt, out_w - wt, hw.transaction_words
    )
    peak = peak_channel_density(cout, tile_candidates(cout), in_density * out_density, channel_group)[:, None, None]
    work = ct * ht * wt * cin_g * taps * b * in_density * peak
    compute = _lane_time(hw, work, ct * ht * wt) * _waves(hw, n_tiles)
    return float(_combine(hw, compute, memory).min()) + hw.launch_time_s


@lru_cache(maxsize=CACHE_SIZE)
def fc(hw: Hardware, cin: int, cout: int) -> float:
    """A fully connected layer on one vector per image.

    As in the paper's simulator, a tiling's tile count is the product of its tile sizes.
    """
    b = hw.batch_size
    co, ci = _grid(tile_candidates(cout), tile_candidates(cin))
    n_tiles = co * ci
    l2_words = (co * ci + ci + co) * n_tiles * b
    dram_words = (cin * cout + cin + cout) * b
    memory = dram_words / hw.dram_words_per_s + l2_words / hw.l2_words_per_s / transaction_efficiency(
        ci, cin, hw.transaction_words
    )
    compute = _lane_time(hw, ci * co * b, ci * co * b) * _waves(hw, n_tiles)
    return float(_combine(hw, compute, memory).min()) + hw.launch_time_s


@lru_cache(maxsize=CACHE_SIZE)
def pool(hw: Hardware, channels: int, in_size: Size, out_size: Size) -> float:
    """A pooling window (max or average, global or not): memory bound, compute hidden."""
    words = channels * (in_size[0] * in_size[1] + out_size[0] * out_size[1]) * hw.batch_size
    return words / hw.dram_words_per_s + words / hw.l2_words_per_s + hw.launch_time_s


@lru_cache(maxsize=CACHE_SIZE)
def add(hw: Hardware, channels: int, size: Size) -> float:
    """Element-wise sum of two maps (the residual connection), streaming from DRAM."""
    ct, ht, wt = _grid(tile_candidates(channels), tile_candidates(size[0]), tile_candidates(size[1]))
    n_tiles = np.ceil(channels / ct) * np.ceil(size[0] / ht) * np.ceil(size[1] / wt)
    tile = ct * ht * wt
    memory = 3 * tile * n_tiles * hw.batch_size / hw.dram_words_per_s
    compute = _lane_time(hw, tile, tile) * _waves(hw, n_tiles) * hw.batch_size
    return float(_combine(hw, compute, memory).min()) + hw.launch_time_s


@lru_cache(maxsize=CACHE_SIZE)
def _global_pool(hw: Hardware, channels: int, size: Size) -> float:
    """Global average pooling by per-pixel channel tiles and a tree reduction (no launch)."""
    ct = np.array([1 << e for e in range(8) if (1 << e) <= 2 * channels], dtype=np.float64)
    pixels = size[0] * size[1]
    channel_tiles = np.ceil(channels / ct)
    n_tiles = channel_tiles * pixels
    compute = _lane_time(hw, ct, ct) * _waves(hw, n_tiles) + _tree_reduce(hw, ct, pixels)
    memory = hw.batch_size * (
        (ct / hw.dram_words_per_s + ct / hw.l2_words_per_s) * n_tiles
        + (ct * pixels + ct) / hw.l2_words_per_s * channel_tiles
    )
    return float(_combine(hw, compute, memory).min())


@lru_cache(maxsize=CACHE_SIZE)
def _broadcast_mul(hw: Hardware, channels: int, size: Size) -> float:
    """Scaling every channel of a map by one value per channel (the SE output; no launch)."""
    h, w = size
    ct, ht, wt = _grid(tile_candidates(channels), tile_candidates(h), tile_candidates(w))
    n_tiles = np.ceil(channels / ct) * np.ceil(h / ht) * np.ceil(w / wt)
    tile = ct * ht * wt
    memory = (2 * channels * h * w + channels) / hw.dram_words_per_s + (2 * tile + ct) * n_tiles / (
        hw.l2_words_per_s * transaction_efficiency(wt, w - wt, hw.transaction_words)
    )
    compute = _lane_time(hw, tile, tile) * _waves(hw, n_tiles)
    return float(_combine(hw, compute, memory).min()) * hw.batch_size


@lru_cache(maxsize=CACHE_SIZE)
def squeeze_excitation(hw: Hardware, channels: int, size: Size, squeeze: int) -> float:
    """SE over a whole map: global pool, two FCs, channel scaling."""
    return (
        _global_pool(hw, channels, size)
        + _broadcast_mul(hw, channels, size)
        + 2 * hw.launch_time_s
        + fc(hw, channels, squeeze)
        + fc(hw, squeeze, channels)
    )


# ---------------------------------------------------------------------------- patches


def _patch_conv_cost(
    hw: Hardware, cin: int, cout: int, out_size: Size, kernel: int, stride: int, groups: int, granularity: int,
    gathered: bool, in_density: float, out_density: float, channel_group: int,
    patch_batch, ct, ht, wt, n_patches,
):
    """Compute and memory time of a convolution on ``n_patches`` patches with the given tiling.

    ``gathered``: the input patches were gathered to a dense buffer; otherwise the kernel
    reads the full map through indices. A tile reads its ``kernel - 1`` halo.
    """
    b, s = hw.batch_size, granularity
    out_h, out_w = out_size
    n_tiles = np.ceil(cout / ct) * np.ceil(s / ht) * np.ceil(s / wt)
    cin_g, taps = cin // groups, kernel * kernel
    tile_weight = ct * cin_g * taps * (in_density * out_density if b == 1 else 1.0)
    tile_input = (
        np.ceil(ct / (cout // groups)) * cin_g * (ht + kernel - 1) * stride * (wt + kernel - 1) * stride * n_patches
    )
    tile_output = ct * ht * wt * n_patches
    l2_words = (tile_weight + (tile_input * in_density + tile_output * out_density) * b) * n_tiles
    if gathered:
        input_words = n_patches * cin * (s + kernel - 1) * stride * (s + kernel - 1) * stride
    else:
        input_words = cin * out_h * stride * out_w * stride
    dram_words = cout * cin_g * taps + b * (input_words * in_density + n_patches * cout * s * s * out_density)
    memory = dram_words / hw.dram_words_per_s + l2_words / hw.l2_words_per_s
    peak = peak_channel_density(cout, np.atleast_1d(ct).ravel(), in_density * out_density, channel_group)
    peak = peak.reshape(np.shape(ct))
    work = ct * ht * wt * cin_g * taps * patch_batch
    per_batch = _lane_time(hw, work, ct * ht * wt * b * patch_batch)
    compute = per_batch * np.ceil(n_patches / patch_batch) * in_density * peak * b * _waves(hw, n_tiles)
    return compute, memory


@lru_cache(maxsize=CACHE_SIZE)
def _patch_conv_tiling(
    hw: Hardware, cin: int, cout: int, out_size: Size, kernel: int, stride: int, groups: int, granularity: int,
    gathered: bool, in_density: float, out_density: float, channel_group: int,
) -> tuple[float, float, float, float]:
    shape = (cin, cout, out_size, kernel, stride, groups, granularity, gathered, in_density, out_density, channel_group)
    axes = (
        tile_candidates(PATCH_BATCH_LIMIT), tile_candidates(cout),
        tile_candidates(granularity), tile_candidates(granularity),
    )
    return _best_tiling(hw, axes, *_patch_conv_cost(hw, *shape, *_grid(*axes), _mean_patches(granularity, out_size)))


@lru_cache(maxsize=CACHE_SIZE)
def patch_conv(
    hw: Hardware, cin: int, cout: int, out_size: Size, kernel: int, stride: int, groups: int, granularity: int,
    density: float, gathered: bool, in_density: float = 1.0, out_density: float = 1.0, channel_group: int = 1,
) -> float:
    """A convolution computing only the active ``granularity`` × ``granularity`` output patches."""
    shape = (cin, cout, out_size, kernel, stride, groups, granularity, gathered, in_density, out_density, channel_group)
    tiling = _patch_conv_tiling(hw, *shape)
    compute, memory = _patch_conv_cost(hw, *shape, *tiling, _active_patches(density, granularity, out_size))
    return float(_combine(hw, compute, memory)) + hw.launch_time_s


def _patch_axes(channels: int, size: Size, granularity: int) -> tuple[np.ndarray, ...]:
    """Tiling axes of element-wise patch kernels: patches per PE, channels, rows, columns."""
    rows, cols = _cells(granularity, size)
    return (
        tile_candidates(rows * cols), tile_candidates(channels),
        tile_candidates(granularity), tile_candidates(granularity),
    )


def _scatter_add_cost(hw: Hardware, channels: int, size: Size, granularity: int, patch_batch, ct, ht, wt, n_patches):
    b, s = hw.batch_size, granularity
    n_tiles = np.ceil(channels / ct) * np.ceil(s / ht) * np.ceil(s / wt)
    tile = ct * ht * wt
    dram_words = (n_patches * channels * s * s + 2 * channels * size[0] * size[1]) * b
    memory = dram_words / hw.dram_words_per_s + 3 * tile * n_patches * n_tiles * b / (
        hw.l2_words_per_s * transaction_efficiency(wt, s - wt, hw.transaction_words)
    )
    per_batch = _lane_time(hw, tile * patch_batch, tile * b * patch_batch)
    compute = per_batch * np.ceil(n_patches / patch_batch) * b * _waves(hw, n_tiles)
    return compute, memory


@lru_cache(maxsize=CACHE_SIZE)
def _scatter_add_tiling(hw: Hardware, channels: int, size: Size, granularity: int) -> tuple[float, ...]:
    axes = _patch_axes(channels, size, granularity)
    mean = _mean_patches(granularity, size)
    return _best_tiling(hw, axes, *_scatter_add_cost(hw, channels, size, granularity, *_grid(*axes), mean))


@lru_cache(maxsize=CACHE_SIZE)
def scatter_add(hw: Hardware, channels: int, size: Size, granularity: int, density: float) -> float:
    """Writing computed patches back into the map, fused with the residual sum."""
    tiling = _scatter_add_tiling(hw, channels, size, granularity)
    n_patches = _active_patches(density, granularity, size)
    compute, memory = _scatter_add_cost(hw, channels, size, granularity, *tiling, n_patches)
    return float(_combine(hw, compute, memory)) + hw.launch_time_s


def _patch_pool_cost(
    hw: Hardware, channels: int, size: Size, granularity: int, patch_batch, ct, ht, wt, n_patches, reduce_count,
):
    b, s = hw.batch_size, granularity
    h, w = size
    n_tiles = np.ceil(channels / ct) * np.ceil(s / ht) * np.ceil(s / wt)
    l2_words = (ct * ht * wt * n_patches + ct) * n_tiles + ct * np.ceil(h / ht) * np.ceil(w / wt) + ct
    memory = b * (
        (n_patches * channels * s * s + channels * h * w) / hw.dram_words_per_s
        + l2_words / hw.l2_words_per_s / transaction_efficiency(wt, s - wt, hw.transaction_words)
    )
    pooling = _lane_time(hw, ct * ht * wt * patch_batch, ct * patch_batch) * np.ceil(n_patches / patch_batch)
    per_pe = (pooling + _lane_time(hw, ct * patch_batch, ct)) * b
    compute = per_pe * _waves(hw, n_tiles) + _tree_reduce(hw, ct, reduce_count)
    return compute, memory


@lru_cache(maxsize=CACHE_SIZE)
def _patch_pool_tiling(hw: Hardware, channels: int, size: Size, granularity: int) -> tuple[float, ...]:
    axes = _patch_axes(channels, size, granularity)
    grid = _grid(*axes)
    reduce_count = np.ceil(granularity / grid[2]) * np.ceil(granularity / grid[3])
    mean = _mean_patches(granularity, size)
    return _best_tiling(hw, axes, *_patch_pool_cost(hw, channels, size, granularity, *grid, mean, reduce_count))


def _patch_pool(hw: Hardware, channels: int, size: Size, granularity: int, density: float) -> float:
    """Global average pooling over the active patches only (no launch).

    The tiling is chosen reducing across one patch's tiles; the run reduces across the
    whole map's tile grid, as in the paper's simulator.
    """
    patch_batch, ct, ht, wt = _patch_pool_tiling(hw, channels, size, granularity)
    n_patches = _active_patches(density, granularity, size)
    reduce_count = math.ceil(size[0] / ht) * math.ceil(size[1] / wt)
    compute, memory = _patch_pool_cost(
        hw, channels, size, granularity, patch_batch, ct, ht, wt, n_patches, reduce_count
    )
    return float(_combine(hw, compute, memory))


@lru_cache(maxsize=CACHE_SIZE)
def dynamic_squeeze_excitation(
    hw: Hardware, channels: int, size: Size, squeeze: int, granularity: int, density: float,
) -> float:
    """SE whose pooling reads only the active patches."""
    return (
        _patch_pool(hw, channels, size, granularity, density)
        + fc(hw, channels, squeeze)
        + fc(hw, squeeze, channels)
        + _broadcast_mul(hw, channels, size)
        + 2 * hw.launch_time_s
    )


# ---------------------------------------------------------------------------- maskers


@lru_cache(maxsize=CACHE_SIZE)
def spatial_masker_conv1(
    hw: Hardware, cin: int, width: int, size: Size, granularity: int, density: float,
    channel_density: float = 1.0, channel_group: int = 1,
) -> float:
    """The spatial masker and the block's first 1×1 conv, whichever way is faster:

    fused (the masker is one more output channel of a dense conv1), or separate (a 1×1
    masker conv with two logits, then conv1 on the active patches only).
    """
    fused = conv(hw, cin, width + 1, size, 1, out_density=channel_density, channel_group=channel_group)
    separate = conv(hw, cin, 2, size, 1) + patch_conv(
        hw, cin, width, size, 1, 1, 1, granularity, density, False,
        out_density=channel_density, channel_group=channel_group,
    )
    return min(fused, separate)


@lru_cache(maxsize=CACHE_SIZE)
def layer_gate(hw: Hardware, cin: int, width: int, size: Size) -> float:
    """The layer-skipping gate: it reads the block input, as a conv1 with every output skipped."""
    return conv(hw, cin, width + 1, size, 1, out_density=0.0)


@lru_cache(maxsize=CACHE_SIZE)
def channel_masker(hw: Hardware, cin: int, size: Size, channel_group: int, reduction: int = 16) -> float:
    """The channel masker: global pool of the block input and a two-layer MLP, one gate per group.

    Sized as in the paper's simulator: ``cin // channel_group`` gates, hidden layer
    ``reduction`` times smaller. Free when there is a single group.
    """
    n_groups = cin // channel_group
    if n_groups <= 1:
        return 0.0
    hidden = n_groups // min(reduction, n_groups)
    return pool(hw, cin, size, (1, 1)) + fc(hw, cin, hidden) + fc(hw, hidden, n_groups)


_CACHED = (
    tile_candidates, conv, fc, pool, add, _global_pool, _broadcast_mul, squeeze_excitation,
    _patch_conv_tiling, patch_conv, _scatter_add_tiling, scatter_add, _patch_pool_tiling,
    dynamic_squeeze_excitation, spatial_masker_conv1, layer_gate, channel_masker,
)
