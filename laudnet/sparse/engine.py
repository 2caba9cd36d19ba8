"""The sparse inference engine: a LAUD model that computes only what its masks select.

:func:`convert` turns a LAUD-ResNet / LAUD-RegNetY into a :class:`SparseModel` with the
same logits as ``model.eval()``. Every block runs the model's own maskers
(``block.compute_masks``), so the decisions are identical, and then executes:

* BatchNorm folded into every conv (:mod:`.folding`).
* **layer**: a block whose gate is off runs only its masker and shortcut; in a batch only the
  samples whose gate is on run the residual branch.
* **channel**: conv1 computes the active output channels only, conv2 active inputs and
  outputs, conv3 active inputs. The weights are stored so that a selection gathers
  contiguous rows (conv1 ``(out, in)``, conv3 ``(in, out)``, conv2 ``(out, in/G, G·9)``) of
  the weights used only, never a copy of the full tensors.
* **spatial**: conv1 runs at the positions conv2 reads (``BlockMasks.conv1``), conv2 and conv3
  at the active positions (:mod:`.gather`: im2col of the selected windows), and the result is
  scatter-added into the shortcut. Activations are channels-last, so every 1×1 conv is a
  plain matrix product on rows and gathers/scatters copy whole rows.
* **both**: the two combined; RegNetY's grouped conv2 runs as one batched product over the
  active conv groups, and its squeeze-excitation pools over the active positions.

Batches with different masks per sample: samples with different channel masks run one group
per distinct mask (identical masks share the products: half the time of a per-sample loop for
a batch of 4 identical masks, the same for 4 distinct ones); the active positions of all
samples are gathered together (7% faster than a per-sample loop at batch 4); samples whose
whole-block gate is on run one by one on views of the batch (8% faster than gathering them
into a sub-batch). Where every position and channel of a block is on, the dense path runs
without any gather.

Gathers and scatters are index copies, never products, so the multiply-accumulates the
engine executes are exactly the dynamic MACs the model reports. The code is device-neutral
(CPU or CUDA, no custom kernels). :mod:`.plan` lists the primitive operations these code paths
run for a block shape and its work; the latency predictor prices a calibrated device from that
list, and the tests hold it to the operations this code dispatches, so change both together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import DynamicBackbone
from ..models.blocks import BlockMasks, DynamicBottleneck
from ..models.regnet import LaudRegNet
from ..models.resnet import LaudResNet
from .folding import fold_conv_bn
from .gather import gather_tables


@dataclass
class _Channels:
    """Active bottleneck channels, their channel groups and (for a grouped conv2) their conv groups."""

    index: torch.Tensor
    groups: torch.Tensor
    conv_groups: torch.Tensor


@dataclass
class _Pixels:
    """Pixel masks of some samples and their active output positions (flat over those samples)."""

    conv1: torch.Tensor
    conv3: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def of(cls, conv1: torch.Tensor, conv3: torch.Tensor) -> "_Pixels":
        return cls(conv1, conv3, conv3.reshape(-1).nonzero().view(-1))

    def subset(self, samples: torch.Tensor) -> "_Pixels":
        return _Pixels.of(self.conv1.index_select(0, samples), self.conv3.index_select(0, samples))


@dataclass
class _Work:
    """One residual-branch computation: which samples, channels and positions.

    ``samples`` is ``None`` for the whole batch; ``channels`` is ``None`` when every channel
    is on; ``pixels`` is ``None`` when every position is on, else those of ``samples``.
    """

    samples: torch.Tensor | None
    channels: _Channels | None
    pixels: _Pixels | None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last ``(B, C, H, W)`` tensor as ``(B·H·W, C)`` rows (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _image(rows: torch.Tensor, batch: int, hw: tuple[int, int]) -> torch.Tensor:
    """``(B·H·W, C)`` rows as a channels-last ``(B, C, H, W)`` tensor (a view)."""
    return rows.view(batch, hw[0], hw[1], rows.shape[1]).permute(0, 3, 1, 2)


class SparseBlock(nn.Module):
    """A residual bottleneck with folded weights that computes only its active work."""

    def __init__(self, block: DynamicBottleneck) -> None:
        super().__init__()
        if block.masker_channel is not None and block.channel_mask_placement != "after_act":
            raise ValueError(
                f"{block.block_name}: channel_mask_placement={block.channel_mask_placement!r} masks before BN, "
                "so skipped channels are not zero and cannot be left out; the sparse engine accepts 'after_act'"
            )
        a, b, c = block.units()
        for unit in (a, b):
            if not isinstance(unit.act, nn.ReLU):
                raise ValueError(f"{block.block_name}: the sparse engine supports ReLU activations, got {unit.act}")
        self.name = block.block_name
        self._source = (block,)  # a tuple, not a submodule: only its maskers are shared (below)
        self.masker_spatial = block.masker_spatial
        self.masker_channel = block.masker_channel
        self.stride = b.conv.stride[0]
        self.groups = b.conv.groups
        width = a.conv.out_channels
        self.group_width = width // self.groups
        self.channel_granularity = block.spec.channel_granularity if block.masker_channel is not None else width

        w1, b1 = fold_conv_bn(a.conv, a.norm)
        self.register_buffer("w1", w1.flatten(1))  # (out, in): active outputs are rows
        self.register_buffer("b1", b1)
        w2, b2 = fold_conv_bn(b.conv, b.norm)
        # Channels-last like the activations (else every conv call converts it): (out, 3, 3, in/groups) in memory.
        self.register_buffer("w2", w2.contiguous(memory_format=torch.channels_last))
        self.register_buffer("b2", b2)
        if block.masker_channel is not None:
            # (out, in/groups, 3, 3) contiguous: an (output, input group) pair is one row of G·9 weights.
            self.register_buffer("w2_rows", w2)
        if block.masker_spatial is not None:
            self.register_buffer("w2_taps", self._tap_layout(w2))
        w3, b3 = fold_conv_bn(c.conv, c.norm)
        self.register_buffer("w3", w3.flatten(1).t().contiguous())  # (in, out): active inputs are rows
        self.register_buffer("b3", b3)
        self.project_stride = 0
        if block.projection is not None:
            wp, bp = fold_conv_bn(block.projection[0], block.projection[1])
            # (in, out): a 1x1 conv on the strided rows is a matrix product (faster than the conv: no weight reorder).
            self.register_buffer("wp", wp.flatten(1).t().contiguous())
            self.register_buffer("bp", bp)
            self.register_buffer("bp3", bp + b3)  # conv3's bias folded into the shortcut when the branch is dense
            self.project_stride = block.projection[0].stride[0]
        self.has_se = block.se is not None
        if self.has_se:
            se = block.se
            if not isinstance(se.activation, nn.ReLU) or not isinstance(se.scale_activation, nn.Sigmoid):
                raise ValueError(f"{block.block_name}: the sparse engine supports ReLU/Sigmoid squeeze-excitation")
            self.register_buffer("se1", se.fc1.weight.detach().flatten(1).t().contiguous())  # (width, se)
            self.register_buffer("se1_b", se.fc1.bias.detach().clone())
            self.register_buffer("se2", se.fc2.weight.detach().flatten(1).contiguous())  # (width, se)
            self.register_buffer("se2_b", se.fc2.bias.detach().clone())

    def _tap_layout(self, w2: torch.Tensor) -> torch.Tensor:
        """conv2's weights as im2col matrices: ``(9, in, out)``, or ``(groups, 9·gw, gw)`` if grouped."""
        if self.groups == 1:
            return w2.permute(2, 3, 1, 0).reshape(9, w2.shape[1], w2.shape[0]).contiguous()
        gw = self.group_width
        return w2.view(self.groups, gw, gw, 3, 3).permute(0, 3, 4, 2, 1).reshape(self.groups, 9 * gw, gw).contiguous()

    # -- what to compute ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for a channels-last input ``x`` (which it may overwrite)."""
        source = self._source[0]
        if source.training:
            raise ValueError(f"{self.name}: the model was put back in training mode; the engine needs eval-mode gates")
        masks = source.compute_masks(x)
        plan = list(self._plan(masks, x.shape[0]))
        if len(plan) == 1 and plan[0].samples is None and plan[0].pixels is None:
            return self._dense_block(x, plan[0].channels)
        # The identity shortcut is x itself: each branch reads its samples before adding to them.
        out = self._project(x, self.bp) if self.project_stride else x
        for work in plan:
            self._add_branch(x, out, work)
        return out.relu_()

    def _project(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The projection shortcut (strided 1x1 conv) with the given folded bias."""
        stride = self.project_stride
        source = x if stride == 1 else x[:, :, ::stride, ::stride]
        return _image(torch.addmm(bias, _rows(source), self.wp), x.shape[0], source.shape[-2:])

    def _dense_block(self, x: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        """Every sample and position computes: the whole branch adds into the shortcut in place."""
        if self.project_stride:
            out = self._project(x, self.bp3)  # conv3's bias folded in
            self._add_dense(x, out, channels, add_bias=False)
        else:
            out = x
            self._add_dense(x, out, channels, add_bias=True)
        return out.relu_()

    def _add_dense(self, x: torch.Tensor, out: torch.Tensor, channels: _Channels | None, add_bias: bool) -> None:
        """``out += branch(x)`` at every position (``out`` may be ``x``: the branch reads it first)."""
        skip_all = channels is not None and channels.index.numel() == 0
        hidden = None if skip_all else self._dense_hidden(x, channels)
        if add_bias:  # conv3's folded BN shift; with every channel off it is all that remains
            out.add_(self.b3[:, None, None])
        if hidden is not None:
            weight = self.w3 if channels is None else self.w3.index_select(0, channels.index)
            rows = _rows(out)
            torch.addmm(rows, hidden, weight, out=rows)  # not addmm_: torch's flop counter skips in-place variants

    def _plan(self, masks: BlockMasks, batch: int) -> Iterator[_Work]:
        """Split the batch into branch computations (none for samples whose branch is off)."""
        samples, pixels = None, None
        gate = masks.conv3
        if gate is not None:
            if gate.shape[-2:] == (1, 1):  # one decision per sample: a whole-block gate
                on = gate.view(-1) > 0
                if not bool(on.all()):
                    samples = on.nonzero().view(-1)
                    if samples.numel() == 0:
                        return
            else:
                pixels = _Pixels.of(masks.conv1, gate)
                if pixels.positions.numel() == 0:
                    return
                if pixels.positions.numel() == gate.numel():
                    pixels = None
        if masks.channel_groups is None:
            if samples is None:
                yield _Work(None, None, pixels)
            else:  # one by one on views: faster on CPU than gathering a sub-batch and scattering it back
                for i in samples.split(1):
                    yield _Work(i, None, None)
            return
        decisions = masks.channel_groups if samples is None else masks.channel_groups.index_select(0, samples)
        if decisions.shape[0] == 1:
            yield _Work(samples, self._channels(decisions[0]), pixels)
            return
        distinct, inverse = torch.unique(decisions, dim=0, return_inverse=True)
        for k in range(distinct.shape[0]):
            members = (inverse == k).nonzero().view(-1)
            if members.numel() == batch:
                yield _Work(None, self._channels(distinct[k]), pixels)
                continue
            subset = members if samples is None else samples.index_select(0, members)
            subset_pixels = None if pixels is None else pixels.subset(members)
            if subset_pixels is None or subset_pixels.positions.numel():  # else: these samples compute nothing
                yield _Work(subset, self._channels(distinct[k]), subset_pixels)

    def _channels(self, group_mask: torch.Tensor) -> _Channels | None:
        groups = group_mask.nonzero().view(-1)
        if groups.numel() == group_mask.numel():
            return None
        g = self.channel_granularity
        index = (groups[:, None] * g + torch.arange(g, device=groups.device)).view(-1)
        return _Channels(index, groups, index[:: self.group_width] // self.group_width)

    # -- how to compute it ----------------------------------------------------------------------
    def _add_branch(self, x: torch.Tensor, out: torch.Tensor, work: _Work) -> None:
        samples, channels = work.samples, work.channels
        if samples is not None and samples.numel() == 1:  # one sample: work on views, no gather or scatter
            i = int(samples)
            x, out, samples = x.narrow(0, i, 1), out.narrow(0, i, 1), None
        out_hw = out.shape[-2:]
        if work.pixels is None:
            if samples is None:
                self._add_dense(x, out, channels, add_bias=True)
                return
            xs = x.index_select(0, samples)
            if channels is not None and channels.index.numel() == 0:
                branch = self.b3.view(1, -1, 1, 1).expand(xs.shape[0], -1, *out_hw)
            else:
                branch = _image(self._conv3(self._dense_hidden(xs, channels), channels), xs.shape[0], out_hw)
            out.index_add_(0, samples, branch)
            return
        xs = x if samples is None else x.index_select(0, samples)
        positions = work.pixels.positions
        if channels is not None and channels.index.numel() == 0:
            values = self.b3.expand(positions.numel(), -1)
        else:
            values = self._spatial_branch(xs, work.pixels.conv1, positions, channels, out_hw)
        if samples is not None:
            per_image = out_hw[0] * out_hw[1]
            positions = samples.index_select(0, positions // per_image) * per_image + positions % per_image
        _rows(out).index_add_(0, positions, values)

    def _conv1(self, rows: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        if channels is None:
            return torch.addmm(self.b1, rows, self.w1.t()).relu_()
        weight = self.w1.index_select(0, channels.index)
        return torch.addmm(self.b1.index_select(0, channels.index), rows, weight.t()).relu_()

    def _conv3(self, rows: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        weight = self.w3 if channels is None else self.w3.index_select(0, channels.index)
        return torch.addmm(self.b3, rows, weight)

    def _dense_hidden(self, x: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        """conv3's input rows at every position (after SE), computing the active channels only."""
        batch = x.shape[0]
        h1 = _image(self._conv1(_rows(x), channels), batch, x.shape[-2:])
        if channels is None:
            weight, bias, groups = self.w2, self.b2, self.groups
        else:
            weight, bias, groups = self._conv2_weight(channels), self.b2.index_select(0, channels.index), 1
            if self.groups > 1:
                groups = channels.conv_groups.numel()
        h2 = F.conv2d(h1, weight, bias, self.stride, 1, 1, groups).relu_()
        h2 = _rows(h2)
        if self.has_se:
            per_image = h2.shape[0] // batch
            pooled = h2.view(batch, per_image, -1).mean(dim=1)
            h2 = (h2.view(batch, per_image, -1) * self._se_scale(pooled, channels)[:, None, :]).view(h2.shape)
        return h2

    def _conv2_weight(self, channels: _Channels) -> torch.Tensor:
        """conv2's weights restricted to the active outputs and inputs, gathered as whole rows in one copy.

        (Selecting inputs along the innermost dimension instead is ten times slower.)
        """
        index = channels.index
        if self.groups > 1:  # active channels are whole conv groups: only outputs are selected
            return self.w2_rows.index_select(0, index)
        g = self.channel_granularity
        in_groups = self.w2_rows.shape[1] // g
        flat = (index[:, None] * in_groups + channels.groups[None, :]).view(-1)
        rows = self.w2_rows.view(-1, g * 9).index_select(0, flat)
        return rows.view(index.numel(), channels.groups.numel() * g, 3, 3)

    def _spatial_branch(
        self, x: torch.Tensor, conv1_mask: torch.Tensor, positions: torch.Tensor, channels: _Channels | None,
        out_hw: tuple[int, int],
    ) -> torch.Tensor:
        """conv3's output rows at ``positions`` (flat over the sub-batch's output pixels)."""
        batch, _, h, w = x.shape
        tables = gather_tables(batch, (h, w), self.stride, x.device)
        rows = _rows(x)
        needed = conv1_mask.reshape(-1).nonzero().view(-1)
        if needed.numel() == rows.shape[0]:
            h1 = self._conv1(rows, channels)
            buffer = F.pad(h1.view(batch, h, w, -1), (0, 0, 1, 1, 1, 1)).view(-1, h1.shape[1])
        else:
            h1 = self._conv1(rows.index_select(0, needed), channels)
            buffer = h1.new_zeros(tables.rows, h1.shape[1])
            buffer.index_copy_(0, tables.padded.index_select(0, needed), h1)
        cols = buffer.index_select(0, tables.windows.index_select(0, positions).view(-1))
        h2 = self._conv2_cols(cols.view(positions.numel(), 9, -1), channels).relu_()
        if self.has_se:
            h2 = h2 * self._se_scale_at(h2, positions // (out_hw[0] * out_hw[1]), batch, channels)
        return self._conv3(h2, channels)

    def _conv2_cols(self, cols: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        """conv2 on gathered windows ``(N, 9, C)``: one matrix product (a batched one per conv group)."""
        n, _, width = cols.shape
        taps, bias = self.w2_taps, self.b2
        if channels is not None:
            bias = bias.index_select(0, channels.index)
        if self.groups == 1:
            if channels is not None:
                taps = taps.index_select(1, channels.index).index_select(2, channels.index)
            return torch.addmm(bias, cols.view(n, -1), taps.view(-1, taps.shape[-1]))
        if channels is not None:
            taps = taps.index_select(0, channels.conv_groups)
        groups, gw = taps.shape[0], self.group_width
        grouped = cols.view(n, 9, groups, gw).permute(2, 0, 1, 3).reshape(groups, n, 9 * gw)
        out = torch.baddbmm(bias.view(groups, 1, gw), grouped, taps)
        return out.permute(1, 0, 2).reshape(n, width)

    def _se_scale_at(
        self, h2: torch.Tensor, sample_of_row: torch.Tensor, batch: int, channels: _Channels | None
    ) -> torch.Tensor:
        """Squeeze-excitation scale per row, pooling each sample over its computed positions only."""
        if batch == 1:
            return self._se_scale(h2.mean(dim=0, keepdim=True), channels)
        counts = torch.bincount(sample_of_row, minlength=batch)
        sums = h2.new_zeros(batch, h2.shape[1]).index_add_(0, sample_of_row, h2)
        present = counts.nonzero().view(-1)  # samples without computed positions skip the SE
        pooled = sums.index_select(0, present) / counts.index_select(0, present)[:, None].to(h2.dtype)
        scale = h2.new_zeros(batch, h2.shape[1]).index_copy_(0, present, self._se_scale(pooled, channels))
        return scale.index_select(0, sample_of_row)

    def _se_scale(self, pooled: torch.Tensor, channels: _Channels | None) -> torch.Tensor:
        if channels is None:
            w1, w2, b2 = self.se1, self.se2, self.se2_b
        else:
            index = channels.index
            w1, w2, b2 = self.se1.index_select(0, index), self.se2.index_select(0, index), self.se2_b.index_select(0, index)
        hidden = torch.addmm(self.se1_b, pooled, w1).relu_()
        return torch.addmm(b2, hidden, w2.t()).sigmoid_()


class SparseModel(nn.Module):
    """Inference-only LAUD model that skips the work its masks switch off (see :func:`convert`)."""

    def __init__(self, model: DynamicBackbone) -> None:
        super().__init__()
        conv, bn, self.stem_pool = _stem(model)
        weight, bias = fold_conv_bn(conv, bn)
        self.register_buffer("stem_weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("stem_bias", bias)
        self.stem_stride, self.stem_padding = conv.stride[0], conv.padding[0]
        self.blocks = nn.ModuleList(SparseBlock(block) for _, block in model.named_dynamic_blocks())
        self.register_buffer("fc_weight", model.fc.weight.detach().clone())
        self.register_buffer("fc_bias", model.fc.bias.detach().clone())
        self.name = getattr(model, "name", type(model).__name__)

    def train(self, mode: bool = True) -> "SparseModel":
        if mode:
            raise ValueError("SparseModel is inference-only: train the LAUD model and convert it again")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(B, 3, H, W)``, any layout."""
        x = F.conv2d(x.contiguous(memory_format=torch.channels_last), self.stem_weight, self.stem_bias,
                     self.stem_stride, self.stem_padding).relu_()
        if self.stem_pool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for block in self.blocks:
            x = block(x)
        return torch.addmm(self.fc_bias, x.mean(dim=(2, 3)), self.fc_weight.t())


def _stem(model: DynamicBackbone) -> tuple[nn.Conv2d, nn.BatchNorm2d, bool]:
    """The stem's conv and BN, and whether a 3×3/2 max pool follows (ResNet)."""
    if isinstance(model, LaudResNet):
        pool = model.maxpool
        if (pool.kernel_size, pool.stride, pool.padding) != (3, 2, 1):
            raise ValueError(f"unexpected ResNet stem pool {pool}")
        return model.conv1, model.bn1, True
    if isinstance(model, LaudRegNet):
        return model.stem[0], model.stem[1], False
    raise ValueError(f"convert: expected a LAUD-ResNet or LAUD-RegNetY model, got {type(model).__name__}")


def convert(model: DynamicBackbone) -> SparseModel:
    """Build the sparse engine of a LAUD model (trained or not); same logits as ``model.eval()``.

    The model is switched to eval mode and keeps ownership of its maskers, which the engine
    shares so that its decisions are the model's; convert again after changing weights.
    Raises ``ValueError`` for a model the engine cannot run exactly (e.g.
    ``channel_mask_placement="before_bn"``).
    """
    model.eval()
    return SparseModel(model).eval()
