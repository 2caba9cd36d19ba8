"""Drawing the built-in synthetic data: small shapes on a cluttered background.

Both tasks' built-in data sets draw with these (classification: one shape per image, its class;
detection: several shapes with boxes and masks), so a network has to find objects and spatial
masks have something to find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

# Ordered so that the first few classes are the most distinct (ring and frame, both thin
# outlines, are the hardest pair for a small network and come apart in the list).
SHAPES: tuple[str, ...] = ("square", "disc", "cross", "triangle", "ring", "bar", "diamond", "frame")


@dataclass(frozen=True)
class Box:
    """An object's bounding box in pixels, ``[top, bottom)`` × ``[left, right)``."""

    top: int
    left: int
    bottom: int
    right: int


def cluttered_background(rng: np.random.Generator, height: int, width: int, clutter: int) -> np.ndarray:
    """A noisy background of random tint with ``clutter`` thin strokes of random colour, position,
    angle and length (later ones on top), as ``(H, W, 3)`` floats in [0, 1]-ish."""
    image = 0.15 + 0.25 * rng.random(3) + 0.08 * rng.standard_normal((height, width, 3))
    if not clutter:
        return image
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    k = clutter
    colours = 0.2 + 0.5 * rng.random((k, 3))
    y0, x0 = rng.random((2, k, 1, 1)) * np.array([height, width]).reshape(2, 1, 1, 1)
    angle = rng.random((k, 1, 1)) * math.pi
    length = 6 + rng.random((k, 1, 1)) * min(height, width) / 3
    along = (xs - x0) * np.cos(angle) + (ys - y0) * np.sin(angle)
    across = -(xs - x0) * np.sin(angle) + (ys - y0) * np.cos(angle)
    strokes = (np.abs(along) < length / 2) & (np.abs(across) < 0.8)
    top_stroke = (strokes * np.arange(1, k + 1).reshape(k, 1, 1)).max(axis=0)
    return np.where((top_stroke > 0)[..., None], colours[np.maximum(top_stroke - 1, 0)], image)


def shape_mask(shape: str, box: Box, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Where ``shape`` (one of :data:`SHAPES`) covers the pixel grid ``ys, xs``, drawn in the square ``box``,
    as a float32 0/1 array."""
    r = (box.bottom - box.top) / 2
    dy, dx = ys - (box.top + r - 0.5), xs - (box.left + r - 0.5)
    inside = (np.abs(dy) < r) & (np.abs(dx) < r)
    dist = np.sqrt(dy**2 + dx**2)
    t = max(1.5, r / 3)
    masks = {
        "square": lambda: inside,
        "disc": lambda: dist < r,
        "ring": lambda: (dist < r) & (dist > r - t),
        "cross": lambda: inside & ((np.abs(dy) < t / 1.5) | (np.abs(dx) < t / 1.5)),
        "triangle": lambda: inside & (np.abs(dx) < (dy + r) / 2),
        "frame": lambda: inside & ((np.abs(dy) > r - t) | (np.abs(dx) > r - t)),
        "diamond": lambda: (np.abs(dy) + np.abs(dx)) < r,
        "bar": lambda: inside & (np.abs(dy) < t),
    }
    if shape not in masks:
        raise UsageError(f"unknown shape {shape!r}; accepted: {', '.join(SHAPES)}")
    return masks[shape]().astype(np.float32)
