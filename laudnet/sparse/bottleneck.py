"""What the sparse engine runs for a residual bottleneck (LAUD-ResNet, LAUD-RegNetY), written once.

:class:`BottleneckProgram` is a block's execution in the primitives of :mod:`.kernels`: run with
:class:`~.kernels.TorchKernels` it computes the block, run with :class:`~.kernels.ShapeKernels` it
lists (for the latency predictor) the kernels it would run. Its input and output are
channels-last maps; every 1×1 conv is a matrix product on their rows.

* BatchNorm is folded into every conv (:mod:`.folding`).
* **layer**: a block whose gate is off runs only its masker and shortcut; in a batch only the
  samples whose gate is on run the residual branch, one by one on views of the batch.
* **channel**: conv1 computes the active output channels only, conv2 active inputs and outputs,
  conv3 active inputs. Weights are stored so that a selection gathers contiguous rows (conv1
  ``(out, in)``, conv3 ``(in, out)``, conv2 ``(out, in/G, G·9)``) of the weights used only.
  Samples with different channel masks run one group per distinct mask (identical masks share
  the products).
* **spatial**: conv1 runs at the positions conv2 reads (``BlockMasks.conv1``), conv2 and conv3 at
  the active positions (an im2col product over the selected windows, :mod:`.gather`), and the
  result is scatter-added into the shortcut; the active positions of all samples are gathered
  together. Where every position and channel of a block is on, the dense path runs.
* **both**: the two combined; RegNetY's grouped conv2 runs as one batched product over the active
  conv groups, and its squeeze-excitation pools over the active positions of each sample.

Gathers and scatters are index copies, never products, so the multiply-accumulates the engine
executes are exactly the dynamic MACs the model reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..models.blocks import BlockMasks, DynamicBottleneck
from ..models.structure import BlockShape
from .folding import fold_conv_bn
from .kernels import Kernels, Shape

Tensor = Any  # a torch.Tensor, or a Shape when the program is priced


@dataclass
class Channels:
    """Active bottleneck channels, their channel groups and (for a grouped conv2) their conv groups."""

    index: Tensor
    groups: Tensor
    conv_groups: Tensor
    count: int


@dataclass
class Pixels:
    """Pixel masks of some samples and their active output positions (flat over those samples)."""

    conv1: Tensor
    positions: Tensor


@dataclass
class Work:
    """One residual-branch computation: which samples, channels and positions.

    ``samples`` is ``None`` for the whole batch; ``channels`` is ``None`` when every channel is on;
    ``pixels`` is ``None`` when every position is on, else those of ``samples``.
    """

    samples: Tensor | None
    channels: Channels | None
    pixels: Pixels | None


class BottleneckProgram:
    """A block's execution in kernel primitives.

    ``shape`` gives the block's layers and spec (its feature sizes are not used: a program runs
    at any input size); ``p`` holds its folded weights (see :func:`weight_shapes`).
    """

    def __init__(self, shape: BlockShape, weights: Any, source: DynamicBottleneck | None = None) -> None:
        self.shape = shape
        self.p = weights
        self.source = source  # the model's block, whose maskers decide (None when priced)

    # -- what to compute ------------------------------------------------------------------------
    def run(self, k: Kernels, x: Tensor) -> Tensor:
        """The block's output for a channels-last input ``x`` (which it may overwrite)."""
        masks = k.compute_masks("masker", self, x)
        works = self.decide(k, masks, k.size(x))
        if len(works) == 1 and works[0].samples is None and works[0].pixels is None:
            return self.dense_block(k, x, works[0].channels)
        # The identity shortcut is x itself: each branch reads its samples before adding to them.
        out = self.project(k, x, self.p.bp) if self.shape.has_projection else x
        for work in works:
            self.add_branch(k, x, out, work)
        return k.relu_("residual", out)

    def decide(self, k: Kernels, masks: BlockMasks, batch: int) -> list[Work]:
        """Split the batch into branch computations (none for samples whose branch is off)."""
        samples, pixels = None, None
        gate = masks.conv3
        if gate is not None:
            if tuple(gate.shape[-2:]) == (1, 1):  # one decision per sample: a whole-block gate, or a single cell
                on = k.positive("masker", gate)
                if not k.all("masker", on):
                    samples = k.nonzero("masker", on)
                    if k.size(samples) == 0:
                        return []
            else:
                positions = k.nonzero("masker", gate)
                if k.size(positions) == 0:
                    return []
                if k.size(positions) < math.prod(gate.shape):
                    pixels = Pixels(masks.conv1, positions)
        if masks.channel_groups is None:
            if samples is None:
                return [Work(None, None, pixels)]
            # One by one on views: faster on CPU than gathering a sub-batch and scattering it back.
            return [Work(k.narrow(samples, 0, i, 1), None, None) for i in range(k.size(samples))]
        decisions = masks.channel_groups
        if samples is not None:
            decisions = k.index_select("masker", decisions, 0, samples)
        if k.size(decisions) == 1:
            return [Work(samples, self.channels(k, k.narrow(decisions, 0, 0, 1)), pixels)]
        distinct, inverse = k.unique_rows("masker", decisions)
        works = []
        for j in range(k.size(distinct)):
            members = k.nonzero("masker", k.equal("masker", inverse, j))
            channels = self.channels(k, k.narrow(distinct, 0, j, 1))
            if k.size(members) == batch:
                works.append(Work(None, channels, pixels))
                continue
            subset = members if samples is None else k.index_select("masker", samples, 0, members)
            subset_pixels = None if pixels is None else self.subset_pixels(k, masks, members)
            if subset_pixels is None or k.size(subset_pixels.positions):  # else: these samples compute nothing
                works.append(Work(subset, channels, subset_pixels))
        return works

    @staticmethod
    def subset_pixels(k: Kernels, masks: BlockMasks, members: Tensor) -> Pixels:
        """The pixels of some samples."""
        conv1 = k.index_select("masker", masks.conv1, 0, members)
        return Pixels(conv1, k.nonzero("masker", k.index_select("masker", masks.conv3, 0, members)))

    def channels(self, k: Kernels, group_mask: Tensor) -> Channels | None:
        """The active channels of one channel mask (``None`` when all are on)."""
        groups = k.nonzero("masker", group_mask)
        if k.size(groups) == math.prod(group_mask.shape):
            return None
        g, gw = self.shape.spec.channel_granularity, self.shape.group_width
        index = k.scale_add("masker", groups, g, k.arange("masker", groups, g))
        return Channels(index, groups, k.floordiv("masker", k.every(index, gw), gw), k.size(groups) * g)

    # -- how to compute it ----------------------------------------------------------------------
    def project(self, k: Kernels, x: Tensor, bias: Tensor) -> Tensor:
        """The projection shortcut (strided 1x1 conv) with the given folded bias."""
        stride, (b, _, h, w) = self.shape.stride, x.shape
        rows = k.rows(x) if stride == 1 else k.strided_rows("projection", x, stride)
        return k.image(k.addmm("projection", bias, rows, self.p.wp), b, (math.ceil(h / stride), math.ceil(w / stride)))

    def dense_block(self, k: Kernels, x: Tensor, channels: Channels | None) -> Tensor:
        """Every sample and position computes: the whole branch adds into the shortcut in place."""
        if self.shape.has_projection:
            out = self.project(k, x, self.p.bp3)  # conv3's bias folded in
            self.add_dense(k, x, out, channels, add_bias=False)
        else:
            out = x
            self.add_dense(k, x, out, channels, add_bias=True)
        return k.relu_("residual", out)

    def add_dense(self, k: Kernels, x: Tensor, out: Tensor, channels: Channels | None, add_bias: bool) -> None:
        """``out += branch(x)`` at every position (``out`` may be ``x``: the branch reads it first)."""
        skip_all = channels is not None and channels.count == 0
        hidden = None if skip_all else self.dense_hidden(k, x, channels)
        if add_bias:  # conv3's folded BN shift; with every channel off it is all that remains
            k.add_("conv3", out, k.view(self.p.b3, -1, 1, 1))
        if hidden is not None:
            weight = self.p.w3 if channels is None else k.index_select("conv3", self.p.w3, 0, channels.index)
            k.addmm_into("conv3", k.rows(out), hidden, weight)

    def add_branch(self, k: Kernels, x: Tensor, out: Tensor, work: Work) -> None:
        samples, channels = work.samples, work.channels
        if samples is not None and k.size(samples) == 1:
            i = k.item("masker", samples)  # one sample: work on views, no gather or scatter
            x, out, samples = k.narrow(x, 0, i, 1), k.narrow(out, 0, i, 1), None
        b, _, oh, ow = out.shape
        if work.pixels is None:
            if samples is None:
                self.add_dense(k, x, out, channels, add_bias=True)
                return
            xs = k.index_select("batch", x, 0, samples)
            n = k.size(samples)
            if channels is not None and channels.count == 0:
                branch = k.expand(k.view(self.p.b3, 1, -1, 1, 1), n, -1, oh, ow)
            else:
                branch = k.image(self.conv3(k, self.dense_hidden(k, xs, channels), channels), n, (oh, ow))
            k.index_add_("batch", out, samples, branch)
            return
        xs = x if samples is None else k.index_select("batch", x, 0, samples)
        positions = work.pixels.positions
        if channels is not None and channels.count == 0:
            values = k.expand(k.view(self.p.b3, 1, -1), k.size(positions), -1)
        else:
            values = self.spatial_branch(k, xs, work.pixels, channels, (oh, ow))
        if samples is not None:  # positions are flat over the sub-batch: find their rows in the batch
            per_image = oh * ow
            sample = k.index_select("scatter_add", samples, 0, k.floordiv("scatter_add", positions, per_image))
            positions = k.add("scatter_add", k.mul_scalar("scatter_add", sample, per_image),
                              k.remainder("scatter_add", positions, per_image))
        k.index_add_("scatter_add", k.rows(out), positions, values)

    def conv1(self, k: Kernels, rows: Tensor, channels: Channels | None) -> Tensor:
        if channels is None:
            return k.relu_("conv1", k.addmm("conv1", self.p.b1, rows, k.t(self.p.w1)))
        weight = k.index_select("conv1", self.p.w1, 0, channels.index)
        bias = k.index_select("conv1", self.p.b1, 0, channels.index)
        return k.relu_("conv1", k.addmm("conv1", bias, rows, k.t(weight)))

    def conv3(self, k: Kernels, rows: Tensor, channels: Channels | None) -> Tensor:
        weight = self.p.w3 if channels is None else k.index_select("conv3", self.p.w3, 0, channels.index)
        return k.addmm("conv3", self.p.b3, rows, weight)

    def dense_hidden(self, k: Kernels, x: Tensor, channels: Channels | None) -> Tensor:
        """conv3's input rows at every position (after SE), computing the active channels only."""
        batch, _, h, w = x.shape
        h1 = k.image(self.conv1(k, k.rows(x), channels), batch, (h, w))
        if channels is None:
            weight, bias, groups = self.p.w2, self.p.b2, self.shape.groups
        else:
            weight = self.conv2_weight(k, channels)
            bias = k.index_select("conv2", self.p.b2, 0, channels.index)
            groups = k.size(channels.conv_groups) if self.shape.groups > 1 else 1
        h2 = k.rows(k.relu_("conv2", k.conv2d("conv2", h1, weight, bias, self.shape.stride, 1, groups)))
        if self.shape.se_channels:
            per_image = k.size(h2) // batch
            per_sample = k.view(h2, batch, per_image, -1)
            scale = self.se_scale(k, k.mean("se", per_sample, 1), channels)
            h2 = k.view(k.mul("se", per_sample, k.view(scale, batch, 1, -1)), batch * per_image, -1)
        return h2

    def conv2_weight(self, k: Kernels, channels: Channels) -> Tensor:
        """conv2's weights restricted to the active outputs and inputs, gathered as whole rows in one copy.

        (Selecting inputs along the innermost dimension instead is ten times slower.)
        """
        index = channels.index
        if self.shape.groups > 1:  # active channels are whole conv groups: only outputs are selected
            return k.index_select("conv2", self.p.w2_rows, 0, index)
        g = self.shape.spec.channel_granularity
        in_groups = self.shape.width // g
        pairs = k.add("conv2", k.mul_scalar("conv2", k.view(index, -1, 1), in_groups), k.view(channels.groups, 1, -1))
        rows = k.index_select("conv2", k.view(self.p.w2_rows, -1, g * 9), 0, k.view(pairs, -1))
        return k.view(rows, channels.count, k.size(channels.groups) * g, 3, 3)

    def spatial_branch(
        self, k: Kernels, x: Tensor, pixels: Pixels, channels: Channels | None, out_hw: tuple[int, int],
    ) -> Tensor:
        """conv3's output rows at the active positions (flat over the sub-batch's output pixels)."""
        batch, _, h, w = x.shape
        tables = k.gather_tables(batch, (h, w), self.shape.stride, x)
        rows = k.rows(x)
        positions = pixels.positions
        needed = k.nonzero("conv1", pixels.conv1)
        if k.size(needed) == k.size(rows):
            h1 = self.conv1(k, rows, channels)
            buffer = k.pad_image_rows("conv1", h1, batch, (h, w))
        else:
            h1 = self.conv1(k, k.index_select("conv1", rows, 0, needed), channels)
            buffer = k.zeros("conv1", h1, tables.rows, k.size(h1, 1))
            k.index_copy_("conv1", buffer, k.index_select("conv1", tables.padded, 0, needed), h1)
        windows = k.index_select("conv2", tables.windows, 0, positions)
        cols = k.index_select("conv2", buffer, 0, k.view(windows, -1))
        h2 = k.relu_("conv2", self.conv2_cols(k, k.view(cols, k.size(positions), 9, -1), channels))
        if self.shape.se_channels:
            sample_of_row = k.floordiv("se", positions, out_hw[0] * out_hw[1])
            h2 = k.mul("se", h2, self.se_scale_at(k, h2, sample_of_row, batch, channels))
        return self.conv3(k, h2, channels)

    def conv2_cols(self, k: Kernels, cols: Tensor, channels: Channels | None) -> Tensor:
        """conv2 on gathered windows ``(N, 9, C)``: one matrix product (a batched one per conv group)."""
        n, _, width = cols.shape
        taps, bias = self.p.w2_taps, self.p.b2
        if channels is not None:
            bias = k.index_select("conv2", bias, 0, channels.index)
        if self.shape.groups == 1:
            if channels is not None:
                taps = k.index_select("conv2", k.index_select("conv2", taps, 1, channels.index), 2, channels.index)
            return k.addmm("conv2", bias, k.view(cols, n, -1), k.view(taps, -1, k.size(taps, 2)))
        if channels is not None:
            taps = k.index_select("conv2", taps, 0, channels.conv_groups)
        groups, gw = k.size(taps), self.shape.group_width
        grouped = k.group_rows("conv2", cols, groups, gw)
        out = k.baddbmm("conv2", k.view(bias, groups, 1, gw), grouped, taps)
        return k.ungroup_rows("conv2", out)

    def se_scale_at(self, k: Kernels, h2: Tensor, sample_of_row: Tensor, batch: int,
                    channels: Channels | None) -> Tensor:
        """Squeeze-excitation scale per row, pooling each sample over its computed positions only."""
        if batch == 1:
            return self.se_scale(k, k.mean("se", h2, 0, keepdim=True), channels)
        width = k.size(h2, 1)
        counts = k.bincount("se", sample_of_row, batch)
        sums = k.index_add_("se", k.zeros("se", h2, batch, width), sample_of_row, h2)
        present = k.nonzero("se", counts)  # samples without computed positions skip the SE
        totals = k.view(k.to_float("se", k.index_select("se", counts, 0, present), h2), -1, 1)
        pooled = k.div("se", k.index_select("se", sums, 0, present), totals)
        scale = k.index_copy_("se", k.zeros("se", h2, batch, width), present, self.se_scale(k, pooled, channels))
        return k.index_select("se", scale, 0, sample_of_row)

    def se_scale(self, k: Kernels, pooled: Tensor, channels: Channels | None) -> Tensor:
        p = self.p
        if channels is None:
            w1, w2, b2 = p.se1, p.se2, p.se2_b
        else:
            index = channels.index
            w1 = k.index_select("se", p.se1, 0, index)
            w2 = k.index_select("se", p.se2, 0, index)
            b2 = k.index_select("se", p.se2_b, 0, index)
        hidden = k.relu_("se", k.addmm("se", p.se1_b, pooled, w1))
        return k.sigmoid_("se", k.addmm("se", b2, hidden, k.t(w2)))


def weight_shapes(c: BlockShape) -> SimpleNamespace:
    """The folded weights of a block as :class:`~.kernels.Shape` s (what a priced program reads)."""
    gw = c.group_width
    taps = (9, c.width, c.width) if c.groups == 1 else (c.groups, 9 * gw, gw)
    shapes = dict(
        w1=(c.width, c.in_channels), b1=(c.width,), w2=(c.width, gw, 3, 3), b2=(c.width,), w2_rows=(c.width, gw, 3, 3),
        w2_taps=taps, w3=(c.width, c.out_channels), b3=(c.out_channels,), wp=(c.in_channels, c.out_channels),
        bp=(c.out_channels,), bp3=(c.out_channels,), se1=(c.width, c.se_channels), se1_b=(c.se_channels,),
        se2=(c.width, c.se_channels), se2_b=(c.width,),
    )
    return SimpleNamespace(**{name: Shape(dims, param=True) for name, dims in shapes.items()})


class SparseBlock(nn.Module):
    """A residual bottleneck with folded weights (buffers) whose :class:`BottleneckProgram` computes
    only its active work."""

    def __init__(self, block: DynamicBottleneck) -> None:
        super().__init__()
        if block.masker_channel is not None and block.channel_mask_placement != "after_act":
            raise UsageError(
                f"{block.block_name}: channel_mask_placement={block.channel_mask_placement!r} masks before BN, "
                "so skipped channels are not zero and cannot be left out; the sparse engine accepts 'after_act'"
            )
        layout = block.layout()
        for unit in (layout.a, layout.b):
            if not isinstance(unit.act, nn.ReLU):
                raise UsageError(f"{block.block_name}: the sparse engine supports ReLU activations, got {unit.act}")
        shape = block.shape_at((1, 1))  # the layers; a program runs at any input size
        self.name = block.block_name
        self._source = (block,)  # a tuple, not a submodule: only its maskers are shared (below)
        self.masker_spatial = block.masker_spatial
        self.masker_channel = block.masker_channel
        a, b, cu = layout.a, layout.b, layout.c
        w1, b1 = fold_conv_bn(a.conv, a.norm)
        self.register_buffer("w1", w1.flatten(1))  # (out, in): active outputs are rows
        self.register_buffer("b1", b1)
        w2, b2 = fold_conv_bn(b.conv, b.norm)
        # Channels-last like the activations (else every conv call converts it): (out, 3, 3, in/groups) in memory.
        self.register_buffer("w2", w2.contiguous(memory_format=torch.channels_last))
        self.register_buffer("b2", b2)
        if shape.spec.has_channel:
            # (out, in/groups, 3, 3) contiguous: an (output, input group) pair is one row of G·9 weights.
            self.register_buffer("w2_rows", w2)
        if shape.spec.has_spatial:
            self.register_buffer("w2_taps", tap_layout(w2, shape.groups))
        w3, b3 = fold_conv_bn(cu.conv, cu.norm)
        self.register_buffer("w3", w3.flatten(1).t().contiguous())  # (in, out): active inputs are rows
        self.register_buffer("b3", b3)
        if layout.projection is not None:
            conv, norm = layout.projection
            wp, bp = fold_conv_bn(conv, norm)
            # (in, out): a 1x1 conv on the strided rows is a matrix product (faster than the conv: no weight reorder).
            self.register_buffer("wp", wp.flatten(1).t().contiguous())
            self.register_buffer("bp", bp)
            self.register_buffer("bp3", bp + b3)  # conv3's bias folded into the shortcut when the branch is dense
        if layout.se is not None:
            se = layout.se
            if not isinstance(se.activation, nn.ReLU) or not isinstance(se.scale_activation, nn.Sigmoid):
                raise UsageError(f"{block.block_name}: the sparse engine supports ReLU/Sigmoid squeeze-excitation")
            self.register_buffer("se1", se.fc1.weight.detach().flatten(1).t().contiguous())  # (width, se)
            self.register_buffer("se1_b", se.fc1.bias.detach().clone())
            self.register_buffer("se2", se.fc2.weight.detach().flatten(1).contiguous())  # (width, se)
            self.register_buffer("se2_b", se.fc2.bias.detach().clone())
        self.program = BottleneckProgram(shape, self, block)

    @property
    def source(self) -> DynamicBottleneck:
        return self._source[0]

    def forward(self, k: Kernels, x: torch.Tensor) -> torch.Tensor:
        """The block's output for a channels-last input ``x`` (which it may overwrite)."""
        if self.source.training:
            raise UsageError(f"{self.name}: the model was put back in training mode; the engine needs eval-mode gates")
        return self.program.run(k, x)


def tap_layout(w2: torch.Tensor, groups: int) -> torch.Tensor:
    """conv2's weights as im2col matrices: ``(9, in, out)``, or ``(groups, 9·gw, gw)`` if grouped."""
    if groups == 1:
        return w2.permute(2, 3, 1, 0).reshape(9, w2.shape[1], w2.shape[0]).contiguous()
    gw = w2.shape[1]
    return w2.view(groups, gw, gw, 3, 3).permute(0, 3, 4, 2, 1).reshape(groups, 9 * gw, gw).contiguous()

