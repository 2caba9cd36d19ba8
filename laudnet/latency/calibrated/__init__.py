"""Latency of the sparse engine on a measured device: its plan, priced with fitted costs.

A profile written by ``laudnet latency calibrate`` (:mod:`laudnet.latency.device.calibrate`) is a
:class:`~laudnet.latency.hardware.Hardware` whose analytic parameters were fitted to the device and
whose ``engine`` costs (:mod:`laudnet.latency.costs`) price each kind of the engine's operations; a block is the
operations :mod:`laudnet.sparse.plan` lists for it, priced (:mod:`.pricing`).
"""

from __future__ import annotations

from ...dynamic.spec import StageSpec
from ...errors import UsageError
from ...models.structure import BlockShape, ModelShape
from ...models.vit_structure import TransformerBlockShape
from ..hardware import Hardware
from ..interface import BlockDensity, LatencyModel
from . import pricing


class CalibratedModel(LatencyModel):
    """What the sparse engine costs on the device a profile was measured on."""

    def __init__(self, hardware: Hardware) -> None:
        if hardware.engine is None:
            raise UsageError(f"hardware {hardware.name} has no engine costs: it is not a calibrated profile")
        super().__init__(hardware)

    def block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
        if isinstance(block, TransformerBlockShape):
            raise UsageError(f"{self.hardware.name} is a calibrated profile: it prices the CNN sparse engine's plan, "
                             "which has no ViT blocks; predict ViTs with a preset or a hardware spec")
        return pricing.expected_block_seconds(self.hardware, block, spec, density)

    def stem_seconds(self, shape: ModelShape) -> float:
        return pricing.stem_seconds(self.hardware, shape)

    def head_seconds(self, shape: ModelShape) -> float:
        return pricing.head_seconds(self.hardware, shape)


__all__ = ["CalibratedModel"]
