"""The LAUDNet paper's analytic latency model of GPUs (and the devices of its presets).

An analytic model of the hardware (processing elements × FP32 lanes, clock, DRAM and L2
bandwidth, memory transactions, kernel launches), of the algorithm and of the scheduling: each
operator's latency is the best over a vectorised search of tilings (:mod:`.operators`,
:mod:`.tiles`), and a block's is composed from its operators (:mod:`.blocks`).
"""

from __future__ import annotations

from ...dynamic.spec import StageSpec
from ...models.structure import BlockShape, ModelShape
from ..interface import BlockDensity, LatencyModel
from . import blocks


class AnalyticModel(LatencyModel):
    """The paper's operators on ``hardware`` (a preset, a hand-written spec, or a profile's fitted parameters)."""

    def block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
        return blocks.block_seconds(self.hardware, block, spec, density)

    def stem_seconds(self, shape: ModelShape) -> float:
        return blocks.stem_seconds(self.hardware, shape)

    def head_seconds(self, shape: ModelShape) -> float:
        return blocks.head_seconds(self.hardware, shape)


__all__ = ["AnalyticModel"]
