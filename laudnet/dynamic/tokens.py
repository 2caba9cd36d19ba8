"""Maskers of vision transformer blocks: which tokens a block computes, which heads, which sub-blocks.

Each masker is one linear layer on the block input giving a (*compute*, *skip*) pair of logits per
decision, gated like the CNN maskers (:func:`~laudnet.dynamic.gates.gate`: straight-through hard
Gumbel-softmax in training, ``compute >= skip`` in evaluation). Like them, each starts with every
gate on: zero weights and a bias favouring *compute*, so a model built from static weights begins
as the static model.

* :class:`TokenMasker` decides per patch token (the class token always computes);
* :class:`HeadMasker` decides per group of attention heads, from the mean token;
* :class:`SubLayerMasker` decides for the attention and the MLP sub-block, from the mean token.

Every masker's layer is ``linear``; its first ``decisions`` outputs are the *compute* logits, so a
shift of ``linear.bias[:decisions]`` moves every decision alike (as
:func:`laudnet.sparse.set_gate_density` does).
"""

from __future__ import annotations

import torch
from torch import nn

from .maskers import CHANNEL_BIASES, SPATIAL_BIASES, _init_decision_layer, _Masker


class _LinearMasker(_Masker):
    """``decisions`` (compute, skip) logit pairs from one linear layer, laid out ``[on_0 … on_n-1, off_0 … off_n-1]``."""

    def __init__(self, dim: int, decisions: int, biases: tuple[float, float]) -> None:
        super().__init__()
        self.decisions = decisions
        self.linear = nn.Linear(dim, 2 * decisions)
        _init_decision_layer(self.linear, decisions, biases)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, decisions)`` logits for vectors ``x`` of shape ``(B, dim)``."""
        return self.linear(x).view(x.shape[0], 2, self.decisions)

    def macs(self) -> int:
        """Multiply-accumulates per image."""
        return self.linear.in_features * self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, decisions)`` 0/1 gates for vectors ``x`` of shape ``(B, dim)`` (mean tokens)."""
        return self._gate(self.logits(x))


class TokenMasker(_Masker):
    """One decision per patch token, from the token itself (a linear layer giving two logits)."""

    decisions = 1

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2)
        _init_decision_layer(self.linear, 1, SPATIAL_BIASES)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 2, L)`` logits for patch tokens of shape ``(B, L, dim)``."""
        return self.linear(tokens).transpose(1, 2)

    @staticmethod
    def token_macs(dim: int, patches: int) -> int:
        """Multiply-accumulates per image: two logits for each of ``patches`` tokens."""
        return patches * dim * 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``(B, L)`` 0/1 gates of patch tokens ``(B, L, dim)``."""
        return self._gate(self.logits(tokens))


class HeadMasker(_LinearMasker):
    """One decision per group of attention heads, from the mean token."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__(dim, groups, CHANNEL_BIASES)


class SubLayerMasker(_LinearMasker):
    """Two decisions, from the mean token: run the attention sub-block (0) and the MLP sub-block (1)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 2, CHANNEL_BIASES)
