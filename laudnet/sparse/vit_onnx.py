"""The LAUD-ViT engine as one ONNX graph: the maskers decide in the graph, only the selected work runs.

:func:`lower_vit` writes what :class:`~.vit.SparseViT` computes as ONNX (opset 17) for ONNX Runtime
(or OpenVINO), built with :class:`~.graph.Graph`:

* **tokens**: ``NonZero`` of the token mask gives the selected (sample, token) pairs; ``GatherND``
  makes them rows, layer norms and products run on the rows, and ``ScatterND`` writes them back
  over the block's input. The attention takes its rows per sample: at batch 1 a reshape; in a batch
  the rows are scattered into ``(B, most rows of a sample)`` with the padding masked out of the keys.
* **heads** (batch 1): the kept heads' slices of qkv and proj are gathered from the constants (stored
  so that a head is one slice of ``(C, 3, H, dh)`` and ``(H, dh, C)``).
* **sub-blocks**: an ``If`` runs the attention (MLP) only when its gate is on; in a batch the rows of
  the samples whose gate is on are gathered, run and written back.

Every node is named after its block and part (``blocks.3/attention/...``). Batch: any size, except
with head masks (samples with different heads cannot share the gathered weights): then the graph
takes one image, and :class:`OrtViTEngine` runs a batch image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from ..errors import UsageError
from ..io import PathLike, check_writable
from ..models.vit import LaudViT, LaudViTBlock
from .export import ExportCheck, ort_session, write_checked
from .graph import Graph, tensor_input
from .vit import PADDING_LOGIT, SparseViT, SparseViTBlock


INPUT, OUTPUT = "images", "logits"


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().contiguous().numpy()


ONE = -1  # GraphRows.layout of a batch of one image: its rows are the attention's layout


@dataclass(frozen=True)
class GraphRows:
    """Token rows ``(R, C)`` in the graph and how the attention lays them out per sample.

    ``layout``: :data:`ONE` (one image: the rows as they are), ``N`` (every sample's ``N`` tokens: a
    reshape), or ``None``: padded through ``pidx`` ``(R, 2)`` (sample, rank) into ``(batch, width)``,
    ``batch`` and ``width`` ``(1,)`` tensors. ``sample``: each row's sample ``(R,)``, where a sub-block
    gate needs it.
    """

    layout: int | None
    sample: str | None = None
    pidx: str | None = None
    batch: str | None = None
    width: str | None = None


class ViTLowering:
    """The graph of one :class:`~.vit.SparseViT` for a batch of any size (``batch=None``) or of one image."""

    def __init__(self, engine: SparseViT, batch_one: bool) -> None:
        self.engine = engine
        self.batch_one = batch_one
        self.g = Graph()

    def build(self) -> onnx.ModelProto:
        g, e = self.g, self.engine
        x, tokens, dim = self._stem()
        for block in e.blocks:
            with g.scope(block.name):
                x = BlockLowering(g, block, tokens, dim, self.batch_one).lower(x)
        with g.scope("head"):
            cls = g.Gather(x, g.scalar(0), axis=1)
            cls = g.LayerNormalization(cls, g.const(_np(e.norm_weight)), g.const(_np(e.norm_bias)), axis=-1,
                                       epsilon=e.norm_eps)
            logits = g.Gemm(cls, g.const(_np(e.head_weight), hint="head"), g.const(_np(e.head_bias)), transB=1)
        g.nodes.append(onnx.helper.make_node("Identity", [logits], [OUTPUT], name=OUTPUT))
        batch = 1 if self.batch_one else "batch"
        return g.model([tensor_input(INPUT, [batch, 3, *e.img_size])],
                       [tensor_input(OUTPUT, [batch, e.head_weight.shape[0]])])

    def _stem(self) -> tuple[str, int, int]:
        g, e = self.g, self.engine
        with g.scope("stem"):
            weight = _np(e.patch_weight)
            dim = weight.shape[0]
            patches = g.Conv(INPUT, g.const(weight, hint="patch_embed"), g.const(_np(e.patch_bias)),
                             kernel_shape=[e.patch, e.patch], strides=[e.patch, e.patch])
            patches = g.Transpose(g.Reshape(patches, g.ints(0, dim, -1)), perm=[0, 2, 1])
            patches = g.Add(patches, g.const(_np(e.pos_embed), hint="pos_embed"))
            batch = g.Slice(g.Shape(INPUT), g.ints(0), g.ints(1))
            cls = g.Expand(g.const(_np(e.cls_pos), hint="cls"), g.Concat(batch, g.ints(1, dim), axis=0))
            x = g.Concat(cls, patches, axis=1)
        return x, 1 + e.pos_embed.shape[1], dim


class BlockLowering:
    """One transformer block in the graph: its masks, then the paths of :class:`~.vit.SparseViTBlock`."""

    def __init__(self, g: Graph, block: SparseViTBlock, tokens: int, dim: int, batch_one: bool) -> None:
        self.g = g
        self.block = block
        self.source: LaudViTBlock = block.source
        self.tokens = tokens
        self.dim = dim
        self.batch_one = batch_one

    # -- masks ---------------------------------------------------------------------------------
    def _decide(self, g: Graph, masker, inputs: str, decisions: int) -> str:
        """A masker's ``compute >= skip`` decisions (bool), computed as the torch masker computes them."""
        logits = g.Add(g.MatMul(inputs, g.const(_np(masker.linear.weight).T, hint="masker")),
                       g.const(_np(masker.linear.bias)))
        on = g.Slice(logits, g.ints(0), g.ints(decisions), g.ints(-1))
        off = g.Slice(logits, g.ints(decisions), g.ints(2 * decisions), g.ints(-1))
        return g.GreaterOrEqual(on, off)

    def lower(self, x: str) -> str:
        g, s = self.g, self.source
        summary = None  # (B, C): the mean token the head and sub-block maskers read
        if s.masker_head is not None or s.masker_layer is not None:
            summary = g.ReduceMean(x, axes=[1], keepdims=0)
        mask = heads = attention = mlp = None
        if s.masker_token is not None:
            with g.scope("masker_token"):
                patches = g.Slice(x, g.ints(1), g.ints(self.tokens), g.ints(1))
                on = g.Squeeze(self._decide(g, s.masker_token, patches, 1), g.ints(-1))  # (B, L)
                first = g.Expand(g.const(np.array([[True]])), g.Concat(g.Slice(g.Shape(x), g.ints(0), g.ints(1)),
                                                                        g.ints(1), axis=0))
                mask = g.Concat(first, on, axis=1)  # (B, N)
        if s.masker_head is not None:
            with g.scope("masker_head"):
                groups = self._decide(g, s.masker_head, summary, s.masker_head.decisions)
                per_head = g.Reshape(g.Expand(g.Unsqueeze(groups, g.ints(2)),
                                              g.ints(1, 1, s.spec.channel_granularity)), g.ints(0, -1))
                heads = g.Gather(g.NonZero(per_head), g.scalar(1), axis=0)  # (k,): a batch of one
        if s.masker_layer is not None:
            with g.scope("masker_layer"):
                gates = self._decide(g, s.masker_layer, summary, 2)
                attention = g.Gather(gates, g.scalar(0), axis=1)
                mlp = g.Gather(gates, g.scalar(1), axis=1)
        if mask is None:
            rows, index = g.Reshape(x, g.ints(-1, self.dim)), None
            layered = s.masker_layer is not None and not self.batch_one
            info = GraphRows(ONE if self.batch_one else self.tokens, self._row_samples(rows) if layered else None)
        else:
            with g.scope("gather"):
                index = g.Transpose(g.NonZero(mask), perm=[1, 0])  # (R, 2): sample, token
                rows = g.GatherND(x, index)
                info = self._token_rows(mask, index)
        with g.scope("attention"):
            rows = self._gated(rows, info, attention, lambda sub, r, i: self._attention(sub, r, i, heads))
        with g.scope("mlp"):
            rows = self._gated(rows, info, mlp, self._mlp)
        if index is None:
            return g.Reshape(rows, g.ints(-1, self.tokens, self.dim))
        with g.scope("scatter"):
            return g.ScatterND(x, index, rows)

    def _row_samples(self, rows: str) -> str:
        """Each row's sample when every sample has all its tokens as rows."""
        g = self.g
        count = g.Slice(g.Shape(rows), g.ints(0), g.ints(1))
        return g.Div(g.Range(g.scalar(0), g.Squeeze(count), g.scalar(1)), g.scalar(self.tokens))

    def _token_rows(self, mask: str, index: str) -> GraphRows:
        g = self.g
        if self.batch_one:
            return GraphRows(ONE)
        sample = g.Gather(index, g.scalar(0), axis=1)
        counts = g.CumSum(g.Cast(mask, to=TensorProto.INT64), g.scalar(1))
        position = g.Sub(g.GatherND(counts, index), g.scalar(1))
        pidx = g.Concat(g.Unsqueeze(sample, g.ints(1)), g.Unsqueeze(position, g.ints(1)), axis=1)
        width = g.ReduceMax(g.Slice(counts, g.ints(self.tokens - 1), g.ints(self.tokens), g.ints(1)), axes=[0],
                            keepdims=0)
        batch = g.Slice(g.Shape(mask), g.ints(0), g.ints(1))
        return GraphRows(None, sample, pidx, batch, width)

    # -- layout of the attention -------------------------------------------------------------------
    @staticmethod
    def _pad(g: Graph, rows: str, info: GraphRows, depth: int) -> str:
        """``(R, depth)`` rows as ``(samples, width, depth)`` (``depth`` is read only for the reshape of whole samples)."""
        if info.layout == ONE:
            return g.Unsqueeze(rows, g.ints(0))
        if info.layout is not None:
            return g.Reshape(rows, g.ints(-1, info.layout, depth))
        depth = g.Slice(g.Shape(rows), g.ints(1), g.ints(2))
        zeros = g.ConstantOfShape(g.Concat(info.batch, info.width, depth, axis=0))
        return g.ScatterND(zeros, info.pidx, rows)

    @staticmethod
    def _unpad(g: Graph, padded: str, info: GraphRows, depth: int) -> str:
        """The inverse of :meth:`_pad`."""
        if info.layout == ONE:
            return g.Squeeze(padded, g.ints(0))
        if info.layout is not None:
            return g.Reshape(padded, g.ints(-1, depth))
        return g.GatherND(padded, info.pidx)

    def _key_bias(self, g: Graph, info: GraphRows) -> str | None:
        if info.layout is not None:
            return None
        fill = onnx.helper.make_tensor("padding", TensorProto.FLOAT, [1], [PADDING_LOGIT])
        padding = g.node("ConstantOfShape", [g.Concat(info.batch, info.width, axis=0)], value=fill)
        zeros = g.ConstantOfShape(g.Slice(g.Shape(info.pidx), g.ints(0), g.ints(1)))
        return g.Unsqueeze(g.ScatterND(padding, info.pidx, zeros), g.ints(1, 2))

    # -- sub-blocks ----------------------------------------------------------------------------------
    def _gated(self, rows: str, info: GraphRows, gate: str | None, sub_block) -> str:
        """``rows + sub_block(rows)`` on the rows of the samples whose ``gate`` is on."""
        g = self.g
        if gate is None:
            return g.Add(rows, sub_block(g, rows, info))
        if self.batch_one:
            return g.if_(g.Squeeze(gate), lambda sub: [sub.Add(rows, sub_block(sub, rows, info))],
                         lambda sub: [rows])

        def run(sub: Graph) -> list[str]:
            keep = sub.Squeeze(sub.NonZero(sub.Gather(gate, info.sample)), sub.ints(0))  # (R',)
            part = sub.Gather(rows, keep, axis=0)
            sub_info = GraphRows(info.layout, sub.Gather(info.sample, keep),
                                 None if info.pidx is None else sub.Gather(info.pidx, keep, axis=0),
                                 info.batch, info.width)
            done = sub.Add(part, sub_block(sub, part, sub_info))
            return [sub.ScatterND(rows, sub.Unsqueeze(keep, sub.ints(1)), done)]

        any_on = g.Cast(g.ReduceMax(g.Cast(gate, to=TensorProto.INT64), keepdims=0), to=TensorProto.BOOL)
        return g.if_(any_on, run, lambda sub: [rows])

    def _attention(self, g: Graph, rows: str, info: GraphRows, heads: str | None) -> str:
        b = self.block
        c, dh = self.dim, b.head_dim
        scale = np.ones((3, 1, 1), dtype=np.float32)
        scale[0] = dh ** -0.5  # the query's scale folded into its weights
        qkv_weight = (_np(b.qkv_weight) * scale[..., None]).transpose(3, 0, 1, 2)  # (C, 3, H, dh)
        qkv_bias = _np(b.qkv_bias) * scale  # (3, H, dh)
        proj_weight = _np(b.proj_weight).transpose(1, 2, 0)  # (H, dh, C)
        hidden = g.LayerNormalization(rows, g.const(_np(b.norm1_weight)), g.const(_np(b.norm1_bias)), axis=-1,
                                      epsilon=b.eps1)
        w, bias, p = g.const(qkv_weight, hint="qkv"), g.const(qkv_bias), g.const(proj_weight, hint="proj")
        if heads is not None:  # a batch of one: the kept heads' slices
            w, bias, p = g.Gather(w, heads, axis=2), g.Gather(bias, heads, axis=1), g.Gather(p, heads, axis=0)
        qkv = g.Add(g.MatMul(hidden, g.Reshape(w, g.ints(c, -1))), g.Reshape(bias, g.ints(-1)))
        qkv = self._pad(g, qkv, info, 3 * c)
        q, k, v = (g.Squeeze(part, g.ints(0)) for part in g.node(
            "Split", [g.Transpose(g.Reshape(qkv, g.ints(0, 0, 3, -1, dh)), perm=[2, 0, 3, 1, 4])], outputs=3, axis=0))
        logits = g.MatMul(q, g.Transpose(k, perm=[0, 1, 3, 2]))
        key_bias = self._key_bias(g, info)
        if key_bias is not None:
            logits = g.Add(logits, key_bias)
        out = g.MatMul(g.Softmax(logits, axis=-1), v)
        out = self._unpad(g, g.Reshape(g.Transpose(out, perm=[0, 2, 1, 3]), g.ints(0, 0, -1)), info, c)
        return g.Add(g.MatMul(out, g.Reshape(p, g.ints(-1, c))), g.const(_np(b.proj_bias)))

    def _mlp(self, g: Graph, rows: str, info: GraphRows) -> str:
        b = self.block
        hidden = g.LayerNormalization(rows, g.const(_np(b.norm2_weight)), g.const(_np(b.norm2_bias)), axis=-1,
                                      epsilon=b.eps2)
        hidden = g.Add(g.MatMul(hidden, g.const(_np(b.fc1_weight).T, hint="fc1")), g.const(_np(b.fc1_bias)))
        gelu = g.Mul(g.Mul(hidden, g.scalar(0.5, np.float32)),
                     g.Add(g.Erf(g.Div(hidden, g.scalar(np.sqrt(2.0), np.float32))), g.scalar(1.0, np.float32)))
        return g.Add(g.MatMul(gelu, g.const(_np(b.fc2_weight).T, hint="fc2")), g.const(_np(b.fc2_bias)))


def lower_vit(model: LaudViT, batch_one: bool) -> onnx.ModelProto:
    """The ONNX graph of ``model``'s engine, for a batch of any size or (``batch_one``) of one image;
    a model with head masks lowers for one image only."""
    if needs_batch_one(model) and not batch_one:
        raise UsageError(f"{model.name} has head masks: its graph takes one image at a time (batch 1)")
    return ViTLowering(SparseViT(model.eval()), batch_one).build()


def needs_batch_one(model: LaudViT) -> bool:
    return any(block.masker_head is not None for block in model.blocks)


def export_vit_onnx(model: LaudViT, path: PathLike, example_input: torch.Tensor, batch: int | None = None) -> ExportCheck:
    """Write ``model`` as an ONNX file whose graph decides the masks and computes only the selected
    work, after checking it in ONNX Runtime on ``example_input`` (relative logit error at most
    :data:`~.export.EXPORT_TOLERANCE`); as :func:`~.export.export_onnx` does for CNNs."""
    check_writable(path)
    batch_one = batch == 1 or needs_batch_one(model)
    if batch not in (None, 1) and needs_batch_one(model):
        raise UsageError(f"{model.name} has head masks: it exports for batch 1 only, got batch {batch}")
    example = example_input[:1] if batch_one else example_input
    return write_checked(lower_vit(model, batch_one), model, example, path)


class OrtViTEngine(nn.Module):
    """A LAUD-ViT's sparse engine run by ONNX Runtime on the CPU: the graph of :func:`lower_vit`, one
    for a batch of one and one for larger batches, built on first use (with ``threads`` threads)."""

    def __init__(self, model: LaudViT, threads: int | None = None) -> None:
        super().__init__()
        self._model = (model.eval(),)  # not a submodule: the engine holds no parameters of its own
        self.threads = threads
        self.name = model.name
        self._sessions: dict[bool, object] = {}

    def session(self, batch_one: bool):
        if batch_one not in self._sessions:
            self._sessions[batch_one] = ort_session(lower_vit(self._model[0], batch_one), self.threads)
        return self._sessions[batch_one]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(B, 3, H, W)``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise UsageError(f"expected a (B, 3, H, W) batch of images, got shape {tuple(x.shape)}")
        array = x.detach().cpu().float().contiguous().numpy()
        if array.shape[0] == 1 or not needs_batch_one(self._model[0]):
            return torch.from_numpy(self.session(array.shape[0] == 1).run([OUTPUT], {INPUT: array})[0])
        session = self.session(True)
        return torch.cat([torch.from_numpy(session.run([OUTPUT], {INPUT: array[i:i + 1]})[0])
                          for i in range(array.shape[0])])
