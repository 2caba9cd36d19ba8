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

from ..dynamic.spec import StageSpec
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
        """Every gate of a block in ``mode`` at ``density`` (other fractions stay 1)."""
        if mode == "static":
            return cls()
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

    @property
    def total_ms(self) -> float:
        return sum(self.ops_ms.values())

    def residual_ms(self, reference_compatible: bool = False) -> float:
        """What the block adds to the residual-stage total; the paper's evaluation script
        leaves out stride-1 projection shortcuts (``reference_compatible``)."""
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

    def stem_seconds(self, shape: ModelShape) -> float:
        raise NotImplementedError

    def head_seconds(self, shape: ModelShape) -> float:
        raise NotImplementedError
