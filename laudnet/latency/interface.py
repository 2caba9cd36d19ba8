"""The interface every latency model implements, and the types it speaks in.

A :class:`LatencyModel` prices a backbone's parts on one device at one batch size: a block run
as its stage spec says at given densities (:class:`BlockDensity`), the stem and the head. Two
implementations exist: the paper's analytic GPU model (:mod:`.analytic`) and a profile fitted to
the sparse engine on a measured device (:mod:`.calibrated`).
:func:`~laudnet.latency.prediction.latency_model` turns a preset name, a YAML file, a
:class:`~.hardware.Hardware` or a model into the right one; prediction, search and suggestion
(:mod:`.prediction`, :mod:`.design`) take either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dynamic.spec import StageSpec, mode_parts
from ..errors import UsageError
from ..models.structure import BlockShape, ModelShape
from .hardware import Hardware


@dataclass(frozen=True)
class BlockDensity:
    """Fractions of a block's work that run: spatial positions of each conv, kept channels.

    In ``layer`` mode ``conv1`` is the rate at which the block runs. ``conv1_measured`` is false
    when ``conv1`` merely repeats the gate density (:meth:`uniform`, the paper's convention); a
    calibrated profile then uses the expected dilation of the cells instead.
    """

    conv1: float = 1.0
    conv2: float = 1.0
    conv3: float = 1.0
    channel: float = 1.0
    conv1_measured: bool = True

    def __post_init__(self) -> None:
        for name in ("conv1", "conv2", "conv3", "channel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} density must be a number in [0, 1], got {value!r}")

    @classmethod
    def uniform(cls, mode: str, density: float) -> "BlockDensity":
        """Every gate of a block in ``mode`` at ``density`` (other fractions stay 1).

        A ViT combination of tokens and sub-blocks (``spatial+layer``) selects ``density`` of the
        tokens (``conv2``), of which each sub-block computes for ``density`` of the images
        (``conv1``/``conv3``: its fraction of the tokens, see :mod:`laudnet.models.vit`).
        """
        if mode == "static":
            return cls()
        parts = mode_parts(mode)
        if {"spatial", "layer"} <= parts:
            channel = density if "channel" in parts else 1.0
            return cls(density * density, density, density * density, channel, conv1_measured=False)
        if {"channel", "layer"} <= parts:  # every token, the sub-blocks at their rate
            return cls(density, 1.0, density, density, conv1_measured=False)
        spatial = density if mode in ("spatial", "layer", "both") else 1.0
        channel = density if mode in ("channel", "both") else 1.0
        return cls(spatial, spatial, spatial, channel, conv1_measured=False)


@dataclass(frozen=True)
class BlockLatency:
    """Predicted latency of one block, in ms per batch, with its parts' shares."""

    name: str
    stage: int
    stride: int
    mode: str
    spatial_granularity: int
    channel_granularity: int
    density: BlockDensity
    ops_ms: dict[str, float] = field(default_factory=dict)
    reference_ms: float | None = None

    @property
    def total_ms(self) -> float:
        return sum(self.ops_ms.values())

    def residual_ms(self, reference_compatible: bool = False) -> float:
        """What the block adds to the residual-stage total; the paper's evaluation script
        leaves out stride-1 projection shortcuts (``reference_compatible``), and its transformer
        script composes a block its own way (``reference_ms``, where a latency model gives it)."""
        if reference_compatible and self.reference_ms is not None:
            return self.reference_ms
        skipped = reference_compatible and self.stride == 1
        return self.total_ms - (self.ops_ms.get("projection", 0.0) if skipped else 0.0)


class LatencyModel:
    """Latency of a backbone's parts on one device (``hardware``) at its batch size, in seconds."""

    def __init__(self, hardware: Hardware) -> None:
        self.hardware = hardware

    @property
    def name(self) -> str:
        return self.hardware.name

    @property
    def batch(self) -> int:
        return self.hardware.batch_size

    def with_batch(self, batch: int) -> "LatencyModel":
        """The same model predicting for another batch size."""
        return type(self)(self.hardware.with_batch(batch))

    def block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
        """Seconds of ``block`` run as ``spec`` says at ``density``, by part of the block."""
        raise NotImplementedError

    def reference_block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> float | None:
        """Seconds of ``block`` as the paper's own script composes it, where that differs from
        :meth:`block_seconds` (transformer blocks); ``None`` elsewhere."""
        return None

    def stem_seconds(self, shape: ModelShape) -> float:
        raise NotImplementedError

    def head_seconds(self, shape: ModelShape) -> float:
        raise NotImplementedError
