"""Index tables for computing a 3×3 conv at selected positions only.

Activations are channels-last, so every position is one contiguous row of channels. conv1's
outputs at its computed positions are copied into a zero-padded row buffer; the 3×3 window
of an output position is then 9 rows of that buffer. Gathering those rows (im2col of the selected positions only) turns conv2 into
one matrix product. The tables depend only on the batch, the input size and the stride, so
they are built once per shape and device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GatherTables:
    """Row indices into the zero-padded buffer of a batch of ``(H, W)`` feature maps.

    ``padded``: for every input position (flattened over batch, H, W) its buffer row.
    ``windows``: for every output position of the strided 3×3 conv, the 9 buffer rows of its
    window, ``(N_out, 9)``. ``rows``: buffer size.
    """

    padded: torch.Tensor
    windows: torch.Tensor
    rows: int


@functools.lru_cache(maxsize=256)
def gather_tables(batch: int, in_hw: tuple[int, int], stride: int, device: torch.device) -> GatherTables:
    """Tables for a 3×3 conv with padding 1 and ``stride`` on ``batch`` maps of size ``in_hw``."""
    h, w = in_hw
    pw = w + 2
    per_image = (h + 2) * pw
    image = torch.arange(batch, device=device)[:, None, None] * per_image
    ys = torch.arange(h, device=device)[:, None]
    xs = torch.arange(w, device=device)[None, :]
    padded = image + (ys + 1) * pw + (xs + 1)
    oy = torch.arange(0, h, stride, device=device)[:, None]
    ox = torch.arange(0, w, stride, device=device)[None, :]
    corners = (image + oy * pw + ox).reshape(-1, 1)
    taps = torch.tensor([dy * pw + dx for dy in range(3) for dx in range(3)], device=device)
    return GatherTables(padded.reshape(-1), corners + taps, batch * per_image)
