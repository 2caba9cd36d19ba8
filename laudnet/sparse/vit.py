"""The sparse engine of LAUD-ViT: each block computes only its selected tokens, heads and sub-blocks.

:func:`convert_vit` (``convert(model)`` for a :class:`~laudnet.models.vit.LaudViT`) builds a
:class:`SparseViT` (torch, any device) or, with ``backend="onnxruntime"``, the graph of
:mod:`.vit_onnx` in an ONNX Runtime session. Each block runs the model's own maskers, so the
decisions are the model's, and then:

* **tokens**: the selected tokens of every sample are gathered as rows of one matrix; layer norms,
  qkv, proj and the MLP run on those rows only; the attention runs per sample on its rows (laid out
  ``(samples, most rows of a sample)``, the padding masked out of the keys); the rows are written
  back, the other tokens are the block's input unchanged.
* **heads**: qkv and proj use the kept heads' slices of their weights (the same slices for a batch
  that shares its heads, else gathered per sample and run as batched products).
* **sub-blocks**: the attention (MLP) runs only on the rows of samples whose gate is on.

The attention is written as matrix products, so ``torch.utils.flop_counter`` sees every
multiply-accumulate: at batch 1 the engine executes exactly the dynamic MACs the model reports
(in a batch, samples with fewer tokens than the batch's most are padded in the attention's two
products). :func:`~laudnet.sparse.density.set_gate_density` sets the gates of an untrained model to a density.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..models.vit import LaudViT, LaudViTBlock, TokenMasks
from .executor import register_converter, resolve_backend

# Attention logit of a padding key: finite, so a row of padding stays finite, and far below any real logit.
PADDING_LOGIT = -1e9


@dataclass(frozen=True)
class Rows:
    """Tokens of a batch as rows of one matrix, in sample order: each row's sample, token and its rank
    among its sample's rows. ``width`` is the most rows of a sample; ``equal``: every sample present
    has ``width`` rows (the attention's layout is then a reshape)."""

    sample: torch.Tensor
    token: torch.Tensor
    position: torch.Tensor
    batch: int
    width: int
    equal: bool

    @classmethod
    def of_mask(cls, mask: torch.Tensor) -> "Rows":
        """The rows of a ``(B, N)`` 0/1 token mask."""
        selected = mask > 0.5
        sample, token = selected.nonzero(as_tuple=True)
        counts = selected.sum(dim=1)
        position = (selected.cumsum(dim=1) - 1)[sample, token]
        width = int(counts.max())
        return cls(sample, token, position, mask.shape[0], width, bool((counts == width).all()))

    @classmethod
    def every(cls, batch: int, tokens: int, device: torch.device) -> "Rows":
        """All tokens of every sample."""
        index = torch.arange(batch * tokens, device=device)
        return cls(index // tokens, index % tokens, index % tokens, batch, tokens, True)

    def subset(self, keep: torch.Tensor) -> "Rows":
        """The rows of the samples ``keep`` (a row mask that takes or leaves whole samples)."""
        position = self.position[keep]
        return Rows(self.sample[keep], self.token[keep], position, self.batch, int(position.max()) + 1, self.equal)

    @property
    def samples(self) -> torch.Tensor:
        """The sample of each row of the attention's layout."""
        if self.equal:
            return self.sample.view(-1, self.width)[:, 0]
        return torch.arange(self.batch, device=self.sample.device)

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """``(R, D)`` rows as ``(samples, width, D)``."""
        if self.equal:
            return rows.view(-1, self.width, rows.shape[-1])
        padded = rows.new_zeros(self.batch, self.width, rows.shape[-1])
        padded[self.sample, self.position] = rows
        return padded

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pad`."""
        if self.equal:
            return padded.reshape(-1, padded.shape[-1])
        return padded[self.sample, self.position]

    def key_bias(self) -> torch.Tensor | None:
        """``(samples, 1, 1, width)`` logits bias that masks the padding keys (``None``: no padding)."""
        if self.equal:
            return None
        valid = torch.zeros(self.batch, self.width, dtype=torch.bool, device=self.sample.device)
        valid[self.sample, self.position] = True
        bias = torch.zeros(valid.shape, device=valid.device).masked_fill_(~valid, PADDING_LOGIT)
        return bias[:, None, None, :]


@dataclass(frozen=True)
class Heads:
    """The kept heads: one index for a batch that shares them, else per sample (padded, with validity)."""

    index: torch.Tensor
    valid: torch.Tensor | None

    @classmethod
    def of_mask(cls, heads: torch.Tensor, samples: torch.Tensor) -> "Heads":
        kept = heads[samples] > 0.5
        if bool((kept == kept[:1]).all()):
            return cls(kept[0].nonzero()[:, 0], None)
        counts = kept.sum(dim=1)
        width = int(counts.max())
        index = kept.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]
        return cls(index, torch.arange(width, device=kept.device)[None] < counts[:, None])


class SparseViTBlock(nn.Module):
    """One transformer block of the engine: the model's maskers, the block's weights as buffers laid out
    so that a head is a contiguous slice (qkv ``(3, H, dh, C)``, proj ``(C, H, dh)``)."""

    def __init__(self, block: LaudViTBlock) -> None:
        super().__init__()
        layout = block.layout()
        if not layout.plain:
            raise UsageError(f"{block.block_name}: the ViT engine runs DeiT's blocks (no q/k norm, output norm, "
                             "gate or layer scale)")
        self.name = block.block_name
        self._source = (block,)  # not a submodule: the maskers stay the model's
        c, h = layout.dim, layout.heads
        self.heads, self.head_dim = h, c // h
        self.eps1, self.eps2 = layout.norm1.eps, layout.norm2.eps
        detach = lambda t: t.detach().clone()  # noqa: E731
        self.register_buffer("norm1_weight", detach(layout.norm1.weight))
        self.register_buffer("norm1_bias", detach(layout.norm1.bias))
        self.register_buffer("qkv_weight", detach(layout.qkv.weight).view(3, h, self.head_dim, c))
        self.register_buffer("qkv_bias", detach(layout.qkv.bias).view(3, h, self.head_dim))
        self.register_buffer("proj_weight", detach(layout.proj.weight).view(c, h, self.head_dim))
        self.register_buffer("proj_bias", detach(layout.proj.bias))
        self.register_buffer("norm2_weight", detach(layout.norm2.weight))
        self.register_buffer("norm2_bias", detach(layout.norm2.bias))
        self.register_buffer("fc1_weight", detach(layout.fc1.weight))
        self.register_buffer("fc1_bias", detach(layout.fc1.bias))
        self.register_buffer("fc2_weight", detach(layout.fc2.weight))
        self.register_buffer("fc2_bias", detach(layout.fc2.bias))

    @property
    def source(self) -> LaudViTBlock:
        return self._source[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        masks = self.source.compute_masks(x)
        if masks.tokens is None:
            rows, tokens = Rows.every(b, n, x.device), x.reshape(b * n, c)
        else:
            rows = Rows.of_mask(masks.tokens)
            tokens = x[rows.sample, rows.token]
        tokens = self._gated(tokens, rows, masks.attention, lambda t, r: self._attention(t, r, masks))
        tokens = self._gated(tokens, rows, masks.mlp, self._mlp)
        if masks.tokens is None:
            return tokens.view(b, n, c)
        out = x.clone()
        out[rows.sample, rows.token] = tokens
        return out

    @staticmethod
    def _gated(tokens: torch.Tensor, rows: Rows, gate: torch.Tensor | None, sub_block) -> torch.Tensor:
        """``tokens + sub_block(tokens)`` on the rows of the samples whose ``gate`` is on."""
        if gate is None:
            return tokens + sub_block(tokens, rows)
        keep = gate[rows.sample] > 0.5
        if bool(keep.all()):
            return tokens + sub_block(tokens, rows)
        if not bool(keep.any()):
            return tokens
        index = keep.nonzero()[:, 0]
        return tokens.index_add(0, index, sub_block(tokens[index], rows.subset(keep)))

    def _attention(self, tokens: torch.Tensor, rows: Rows, masks: TokenMasks) -> torch.Tensor:
        h = F.layer_norm(tokens, tokens.shape[-1:], self.norm1_weight, self.norm1_bias, self.eps1)
        c, dh = tokens.shape[-1], self.head_dim
        heads = None if masks.heads is None else Heads.of_mask(masks.heads, rows.samples)
        if heads is None or heads.valid is None:  # one set of heads: sliced weights on the rows
            qkv_weight, qkv_bias, proj_weight = self.qkv_weight, self.qkv_bias, self.proj_weight
            if heads is not None:
                qkv_weight, qkv_bias = qkv_weight[:, heads.index], qkv_bias[:, heads.index]
                proj_weight = proj_weight[:, heads.index]
            kept = qkv_weight.shape[1]
            qkv = rows.pad(F.linear(h, qkv_weight.reshape(-1, c), qkv_bias.reshape(-1)))
        else:  # heads per sample: the samples' weights gathered, batched products
            kept = heads.index.shape[1]
            weight = self.qkv_weight[:, heads.index].permute(1, 4, 0, 2, 3).reshape(-1, c, 3 * kept * dh)
            bias = self.qkv_bias[:, heads.index].permute(1, 0, 2, 3).reshape(-1, 1, 3 * kept * dh)
            qkv = torch.baddbmm(bias, rows.pad(h), weight)
        s, w = qkv.shape[:2]
        q, k, v = qkv.view(s, w, 3, kept, dh).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * dh ** -0.5) @ k.transpose(-2, -1)
        bias = rows.key_bias()
        if bias is not None:
            logits = logits + bias
        out = logits.softmax(dim=-1) @ v
        if heads is None or heads.valid is None:
            return F.linear(rows.unpad(out.transpose(1, 2).reshape(s, w, kept * dh)), proj_weight.reshape(c, -1),
                            self.proj_bias)
        out = out * heads.valid[:, :, None, None]
        weight = self.proj_weight[:, heads.index].permute(1, 2, 3, 0).reshape(-1, kept * dh, c)
        return rows.unpad(torch.baddbmm(self.proj_bias, out.transpose(1, 2).reshape(s, w, kept * dh), weight))

    def _mlp(self, tokens: torch.Tensor, rows: Rows) -> torch.Tensor:
        h = F.layer_norm(tokens, tokens.shape[-1:], self.norm2_weight, self.norm2_bias, self.eps2)
        return F.linear(F.gelu(F.linear(h, self.fc1_weight, self.fc1_bias)), self.fc2_weight, self.fc2_bias)


class SparseViT(nn.Module):
    """Inference-only LAUD-ViT that skips the work its masks switch off (see :func:`convert_vit`)."""

    def __init__(self, model: LaudViT) -> None:
        super().__init__()
        if not all(isinstance(m, nn.Identity) for m in (model.norm_pre, model.fc_norm, model.patch_embed.norm)):
            raise UsageError(f"{model.name}: the ViT engine runs DeiT's layout (no pre-norm, patch norm or fc_norm)")
        conv = model.patch_embed.proj
        self.patch, self.img_size = conv.stride[0], model.img_size
        self.register_buffer("patch_weight", conv.weight.detach().clone())
        self.register_buffer("patch_bias", conv.bias.detach().clone())
        self.register_buffer("cls_pos", (model.cls_token + model.pos_embed[:, :1]).detach().clone())
        self.register_buffer("pos_embed", model.pos_embed[:, 1:].detach().clone())
        self.register_buffer("norm_weight", model.norm.weight.detach().clone())
        self.register_buffer("norm_bias", model.norm.bias.detach().clone())
        self.norm_eps = model.norm.eps
        self.register_buffer("head_weight", model.head.weight.detach().clone())
        self.register_buffer("head_bias", model.head.bias.detach().clone())
        self.blocks = nn.ModuleList(SparseViTBlock(block) for block in model.blocks)
        self.name = model.name

    def train(self, mode: bool = True) -> "SparseViT":
        if mode:
            raise UsageError("the sparse engine is inference-only: train the LAUD model and convert it again")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(B, 3, H, W)``."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise UsageError(f"{self.name} takes {self.img_size[0]}x{self.img_size[1]} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        patches = F.conv2d(x, self.patch_weight, self.patch_bias, stride=self.patch).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_pos.expand(x.shape[0], -1, -1), patches + self.pos_embed], dim=1)
        for block in self.blocks:
            x = block(x)
        cls = F.layer_norm(x[:, 0], x.shape[-1:], self.norm_weight, self.norm_bias, self.norm_eps)
        return F.linear(cls, self.head_weight, self.head_bias)


def convert_vit(model: LaudViT, backend: str = "auto", threads: int | None = None) -> nn.Module:
    """The sparse engine of a LAUD-ViT: ``torch`` (any device) or ``onnxruntime`` (CPU; ``auto`` on the
    CPU). The model is switched to eval mode; the torch engine shares its maskers."""
    backend = resolve_backend(model, backend, "torch")
    model.eval()
    if backend == "triton":
        raise UsageError("the ViT engine has no Triton kernels: use backend='torch' on a GPU")
    if backend == "onnxruntime":
        from .vit_onnx import OrtViTEngine

        return OrtViTEngine(model, threads=threads).eval()
    return SparseViT(model).eval()


register_converter(lambda model: isinstance(model, LaudViT), convert_vit)
