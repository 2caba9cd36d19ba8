"""The LAUDNet paper's latency model of vision transformer blocks: operators, token/head/layer policies.

Operators follow the paper's transformer simulator (``DyNetSimulator``): a matrix product of
``rows`` × ``cin`` by ``cin`` × ``cout`` is a 1×1 convolution searched over tilings
(:func:`~.operators.conv`) on a near-square ``round(√rows) × round(rows / round(√rows))`` map; a
linear layer is such a product; element-wise operators are the residual sum's kernel
(:func:`~.operators.add`) on the last two axes; reductions over the last axis are the global
pooling kernel on a ``⌈√n⌉ × ⌈√n⌉`` map; softmax and layer norm are two reductions and two
element-wise passes fused into one launch; GELU is element-wise. Shapes are per image: the
hardware's batch multiplies the work (giving the batch in the shapes too would apply it twice).
The kernels' searches are cached where :mod:`.operators` caches them.

Two compositions of a block exist:

* :func:`block_seconds`, what laudnet's sparse engine runs (:mod:`laudnet.sparse.vit`): the maskers,
  the selected tokens gathered, both sub-blocks (each at its gate's rate) on them with the kept
  heads sliced out of qkv and proj, and the results scattered back;
* :func:`reference_block_seconds`, the official ``simulate_ada_block`` (AdaViT's policies: qkv and
  layer norms on every token, ``int(L · density)`` tokens attending, skipped heads also slicing the
  MLP's input and proj's output), which ``reference_compatible`` reports.
"""

from __future__ import annotations

import math

from ...dynamic.spec import StageSpec, mode_parts
from ...models.structure import ModelShape
from ...models.vit_structure import TokenFractions, TransformerBlockShape
from ..hardware import Hardware
from ..interface import BlockDensity
from . import blocks as conv_blocks
from . import operators as op
from .operators import _global_pool  # the global-pooling kernel is the simulator's reduction

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------- operators


def matmul(hw: Hardware, rows: int, cin: int, cout: int) -> float:
    """``(rows × cin) @ (cin × cout)`` per image (``rows`` spans every leading axis, heads included)."""
    if rows <= 0 or cin <= 0 or cout <= 0:
        return 0.0
    height = round(math.sqrt(rows))
    return op.conv(hw, cin, cout, (height, round(rows / height)), 1)


def linear(hw: Hardware, rows: int, cin: int, cout: int) -> float:
    """A linear layer on ``rows`` tokens."""
    return matmul(hw, rows, cin, cout)


def elementwise(hw: Hardware, shape: Shape) -> float:
    """One element-wise pass over a tensor of ``shape`` (its last axis the channels)."""
    if math.prod(shape) == 0:
        return 0.0
    rows = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return op.add(hw, shape[-1], (rows, shape[-2]))


def reduce_last(hw: Hardware, shape: Shape) -> float:
    """A reduction over the last axis of ``shape`` (max, sum or mean)."""
    n = shape[-1]
    side = math.ceil(math.sqrt(n))
    return _global_pool(hw, math.prod(shape) // n, (side, side)) + hw.launch_time_s


def softmax(hw: Hardware, shape: Shape) -> float:
    """Max, subtract-and-exponentiate, sum and divide over the last axis, in one launch."""
    if math.prod(shape) == 0:
        return 0.0
    return 2 * reduce_last(hw, shape) + 2 * elementwise(hw, shape) - 3 * hw.launch_time_s


def layer_norm(hw: Hardware, shape: Shape) -> float:
    """Mean and variance over the last axis, normalisation and affine map, in one launch."""
    if math.prod(shape) == 0:
        return 0.0
    return 2 * reduce_last(hw, shape) + 2 * elementwise(hw, shape) - 3 * hw.launch_time_s


def gelu(hw: Hardware, shape: Shape) -> float:
    return elementwise(hw, shape)


def dynamic_linear(hw: Hardware, rows: int, cin: int, cout: int, in_density: float = 1.0,
                   out_density: float = 1.0) -> float:
    """A linear layer computing ``in_density`` of its inputs and ``out_density`` of its outputs (sliced
    weights: the products shrink, no imbalance across tiles)."""
    cin = round(cin * in_density) if in_density < 1 else cin
    cout = round(cout * out_density) if out_density < 1 else cout
    return matmul(hw, rows, cin, cout)


def residual_add(hw: Hardware, tokens: int, dim: int) -> float:
    """The residual sum of a sub-block on ``tokens`` tokens (the simulator's ``add(1, tokens, dim)``)."""
    return op.add(hw, 1, (tokens, dim)) if tokens > 0 and dim > 0 else 0.0


# ---------------------------------------------------------------------------- densities


def fractions(spec: StageSpec, density: BlockDensity) -> TokenFractions:
    """A ViT block's :class:`BlockDensity` (the CNN fields, see :mod:`laudnet.models.vit`) as fractions:
    tokens ``conv2``, heads ``channel``, attention ``conv1 / conv2``, MLP ``conv3 / conv2``."""
    parts = mode_parts(spec.mode)
    tokens = density.conv2 if "spatial" in parts else 1.0
    heads = density.channel if "channel" in parts else 1.0
    attention = mlp = 1.0
    if "layer" in parts:
        attention = min(density.conv1 / tokens, 1.0) if tokens > 0 else 0.0
        mlp = min(density.conv3 / tokens, 1.0) if tokens > 0 else 0.0
    return TokenFractions(tokens, heads, attention, mlp)


# ---------------------------------------------------------------------------- blocks


def block_seconds(hw: Hardware, b: TransformerBlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
    """Seconds of ``b`` as laudnet's sparse engine runs it as ``spec`` says at ``density``, by part."""
    parts = mode_parts(spec.mode)
    f = fractions(spec, density)
    c, hidden = b.dim, b.mlp_hidden
    n = max(1, round(f.tokens * b.tokens))
    groups = b.heads // spec.channel_granularity
    kept = round(f.heads * groups) * spec.channel_granularity if "channel" in parts else b.heads
    width = kept * b.head_dim
    ops: dict[str, float] = {}
    if "spatial" in parts:
        ops["token_masker"] = linear(hw, b.patches, c, 2)
        ops["gather"] = elementwise(hw, (1, n, c))
    if "channel" in parts:
        ops["head_masker"] = linear(hw, 1, c, 2 * groups)
    if "layer" in parts:
        ops["layer_masker"] = linear(hw, 1, c, 4)
    attention = {
        "norm1": layer_norm(hw, (1, n, c)),
        "qkv": linear(hw, n, c, 3 * width),
        "attention": (matmul(hw, kept * n, b.head_dim, n) + softmax(hw, (1, kept, n, n))
                      + matmul(hw, kept * n, n, b.head_dim)),
        "proj": linear(hw, n, width, c),
        "attention_add": residual_add(hw, n, c),
    }
    mlp = {
        "norm2": layer_norm(hw, (1, n, c)),
        "fc1": linear(hw, n, c, hidden),
        "gelu": gelu(hw, (1, n, hidden)),
        "fc2": linear(hw, n, hidden, c),
        "mlp_add": residual_add(hw, n, c),
    }
    ops |= {name: seconds * f.attention for name, seconds in attention.items()}
    ops |= {name: seconds * f.mlp for name, seconds in mlp.items()}
    if "spatial" in parts:
        ops["scatter"] = elementwise(hw, (1, n, c))
    return ops


def reference_block_seconds(hw: Hardware, b: TransformerBlockShape, spec: StageSpec, density: BlockDensity) -> float:
    """Seconds of ``b`` as the official ``simulate_ada_block`` computes them (AdaViT's policies)."""
    parts = mode_parts(spec.mode)
    f = fractions(spec, density)
    tokens, heads = "spatial" in parts, "channel" in parts
    length, c, h, dh, hidden = b.tokens, b.dim, b.heads, b.dim // b.heads, b.mlp_hidden
    hd = f.heads if heads else 1.0
    policies = (linear(hw, 1, c, 2) if "layer" in parts else 0.0) + (linear(hw, 1, c, h) if heads else 0.0)
    kept_heads = int(h * hd)
    qkv = 3 * dynamic_linear(hw, length, c, c, 1.0, hd)
    token_mask = dynamic_linear(hw, length, c, 1, hd, 1.0) if tokens else 0.0
    selected = int(length * f.tokens)
    core = (matmul(hw, kept_heads * selected, dh, selected) + softmax(hw, (1, kept_heads, selected, selected))
            + matmul(hw, kept_heads * selected, selected, dh))
    proj = dynamic_linear(hw, selected, c, c, hd, hd)
    attention = (layer_norm(hw, (1, length, c)) + qkv + token_mask + core + proj
                 + residual_add(hw, selected, int(c * hd)))
    mlp = (layer_norm(hw, (1, length, c)) + dynamic_linear(hw, selected, c, hidden, hd, 1.0)
           + gelu(hw, (1, selected, hidden)) + linear(hw, selected, hidden, c) + residual_add(hw, selected, c))
    return policies + f.attention * attention + f.mlp * mlp


def stem_seconds(hw: Hardware, shape: ModelShape) -> float:
    """The patch embedding (a strided convolution) and the position embedding's sum."""
    first = shape.blocks[0]
    return conv_blocks.stem_seconds(hw, shape) + elementwise(hw, (1, first.tokens, first.dim))


def head_seconds(hw: Hardware, shape: ModelShape) -> float:
    """The final layer norm over every token and the classifier on the class token."""
    last = shape.blocks[-1]
    return layer_norm(hw, (1, last.tokens, last.dim)) + linear(hw, 1, shape.head.in_channels, shape.head.out_channels)
