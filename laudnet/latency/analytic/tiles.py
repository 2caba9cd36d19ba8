"""Tiling arithmetic shared by the operator models.

A kernel splits its output into tiles, one tile per PE at a time. The operator models
search over tile sizes (:func:`tile_candidates`) with array operations and need three
efficiencies: how well a tile fills a PE's pipelines (:func:`fill_efficiency`), how much
of each memory transaction a row of a tile uses (:func:`transaction_efficiency`), and,
for channel-masked convolutions, the busiest tile's share of active channels
(:func:`peak_channel_density`), which sets the time of a wave of tiles.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

MAX_POW2_EXPONENT = 8
MAX_DIVISOR = 8


@lru_cache(maxsize=None)
def tile_candidates(n: int) -> np.ndarray:
    """Tile sizes tried along an axis of length ``n``, sorted.

    Powers of two below ``2**MAX_POW2_EXPONENT`` (up to ``2n``), the sizes that split ``n``
    into 1 to ``MAX_DIVISOR - 1`` near-equal parts, and the small sizes 2 to 7.
    """
    small = min(n, MAX_DIVISOR)
    sizes = {1 << e for e in range(MAX_POW2_EXPONENT) if (1 << e) <= 2 * n}
    sizes.update(math.ceil(n / parts) for parts in range(1, small))
    sizes.update(range(2, small))
    array = np.array(sorted(sizes), dtype=np.float64)
    array.setflags(write=False)
    return array


def fill_efficiency(work, parallelism: float):
    """Fraction of ``ceil(work / parallelism)`` full rounds of a PE that ``work`` uses."""
    return work / (np.ceil(work / parallelism) * parallelism)


def transaction_efficiency(run, gap, width: int):
    """Useful fraction of memory transactions of ``width`` words when reading rows of ``run``
    contiguous words separated by ``gap`` words that are not needed."""
    run = np.asarray(run, dtype=np.float64)
    gap = np.maximum(np.asarray(gap, dtype=np.float64), 0.0)
    return np.where(
        run > width,
        fill_efficiency(run, width),
        np.where(run + gap > width, run / width, run / (run + gap)),
    )


def peak_channel_density(channels: int, tiles: np.ndarray, density: float, group: int) -> np.ndarray:
    """Expected active-channel fraction of the busiest tile, for each channel tile size in ``tiles``.

    Channel groups of ``group`` consecutive channels are active with probability
    ``density``; a wave of tiles lasts as long as its busiest tile, so a masked convolution
    pays this peak rather than the mean. Computed exactly, hence deterministic.
    """
    return np.array([_expected_peak(math.ceil(channels / t), int(t), float(density), group) for t in tiles])


@lru_cache(maxsize=None)
def _expected_peak(n_tiles: int, tile: int, density: float, group: int) -> float:
    """E[max over tiles of active channels] / ``tile`` for ``n_tiles`` tiles of ``tile`` channels.

    A tile's count is a sum of independent group indicators weighted by the group's overlap
    with the tile. Tiles inside one group are identical, so each such group counts once;
    tiles straddling groups are treated as independent (exact when tiles and groups align).
    """
    if density >= 1.0:
        return 1.0
    if density <= 0.0:
        return 0.0
    starts = np.arange(n_tiles, dtype=np.int64) * tile
    first = starts // group
    inside = first == (starts + tile - 1) // group
    inside_groups = first[inside]
    n_inside_groups = int(np.count_nonzero(np.diff(inside_groups))) + 1 if inside_groups.size else 0
    cdf_of_max = _cdf(_bernoulli_pmf(tile, tile, density)) ** n_inside_groups
    # A straddling tile's overlaps with its groups depend only on where in a group it starts.
    offsets = np.bincount(starts[~inside] % group, minlength=group)
    for offset in np.flatnonzero(offsets).tolist():
        head = (group - offset) % group
        tail = (offset + tile) % group
        n_full = (tile - head - tail) // group
        pmf = _scaled_binomial_pmf(n_full, group, density, tile)
        pmf = _add_bernoulli(_add_bernoulli(pmf, head, density), tail, density)
        cdf_of_max = cdf_of_max * _cdf(pmf) ** int(offsets[offset])
    expected_max = float(np.sum(1.0 - cdf_of_max[:tile]))
    return max(expected_max / tile, density)


def _cdf(pmf: np.ndarray) -> np.ndarray:
    return np.minimum(np.cumsum(pmf), 1.0)


def _bernoulli_pmf(weight: int, size: int, p: float) -> np.ndarray:
    pmf = np.zeros(size + 1)
    pmf[0] += 1.0 - p
    pmf[weight] += p
    return pmf


def _add_bernoulli(pmf: np.ndarray, weight: int, p: float) -> np.ndarray:
    """Distribution of X + weight * Bernoulli(p), X ~ ``pmf`` (support cut at len(pmf) - 1)."""
    if weight == 0:
        return pmf
    shifted = np.zeros_like(pmf)
    shifted[weight:] = pmf[: len(pmf) - weight]
    return (1.0 - p) * pmf + p * shifted


def _scaled_binomial_pmf(n: int, scale: int, p: float, size: int) -> np.ndarray:
    """Distribution of scale * Binomial(n, p) on 0..size."""
    k = np.arange(n + 1)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    log_pmf = log_factorial[n] - log_factorial[k] - log_factorial[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    pmf = np.zeros(size + 1)
    pmf[k * scale] = np.exp(log_pmf)
    return pmf
