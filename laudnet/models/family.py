"""Backbone families: the one place that knows how a family lays out its layers.

A :class:`Family` adapter answers, for a model of its family (a LAUD model or the torchvision
model it mirrors), where the stem, the residual blocks and the classifier are, and what each
block is made of (:class:`BlockLayout`). Everything else (the dynamic blocks' forward pass,
static shapes and MACs, the sparse engine, the latency predictor) reads a model through its
family, found by class with :func:`family_of`; nothing guesses a family from attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

from ..dynamic.spec import MODES
from ..errors import UsageError


@dataclass(frozen=True)
class Unit:
    """A conv, its norm and its (optional) activation."""

    conv: nn.Conv2d
    norm: nn.Module
    act: nn.Module | None


@dataclass(frozen=True)
class BlockLayout:
    """A residual bottleneck: ``out_act(projection(x) + c(se(b(a(x)))))``.

    ``projection`` is the shortcut's conv and norm (``None``: identity); ``se`` a
    squeeze-excitation with ``fc1``, ``activation``, ``fc2`` and ``scale_activation``.
    """

    a: Unit
    b: Unit
    c: Unit
    se: nn.Module | None
    projection: tuple[nn.Conv2d, nn.Module] | None
    out_act: nn.Module


@dataclass(frozen=True)
class StemLayout:
    """``pool(act(norm(conv(x))))``; ``pool`` is ``None`` where the family has none. ``name``:
    the conv's module path."""

    name: str
    conv: nn.Conv2d
    norm: nn.Module
    act: nn.Module
    pool: nn.MaxPool2d | None


class Family:
    """The layout of one backbone family. Subclasses implement the four methods."""

    name: str = ""
    # The dynamic modes the family's blocks implement (see :mod:`laudnet.dynamic.spec`).
    modes: tuple[str, ...] = MODES

    def stem(self, model: nn.Module) -> StemLayout:
        raise NotImplementedError

    def stages(self, model: nn.Module) -> list[nn.Sequential]:
        """The residual stages, each a sequence of blocks, in order."""
        raise NotImplementedError

    def block_names(self, model: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
        """Every residual block with its module path (``layer1.0``, ...) and its stage."""
        raise NotImplementedError

    def block(self, block: nn.Module) -> BlockLayout:
        raise NotImplementedError

    def head(self, model: nn.Module) -> nn.Linear:
        """The classifier after global average pooling."""
        return model.fc

    def shape(self, model: nn.Module, input_hw: tuple[int, int]):
        """The family's :class:`~laudnet.models.structure.ModelShape` of ``model`` at ``input_hw``."""
        raise NotImplementedError


_FAMILIES: list[tuple[type, Family]] = []


def register_family(family: Family, *classes: type) -> Family:
    """Make ``family`` the adapter of models of ``classes`` (and their subclasses)."""
    for cls in classes:
        _FAMILIES.append((cls, family))
    return family


def family_of(model: nn.Module) -> Family:
    """The adapter of ``model``'s family; a model of no known family is an error naming the accepted ones."""
    for cls, family in _FAMILIES:
        if isinstance(model, cls):
            return family
    known = ", ".join(sorted({c.__name__ for c, _ in _FAMILIES}))
    raise UsageError(f"{type(model).__name__} is not a backbone laudnet knows; accepted: {known}")
