"""The LAUDNet paper's analytic latency model of GPUs (and the devices of its presets).

An analytic model of the hardware (processing elements × FP32 lanes, clock, DRAM and L2
bandwidth, memory transactions, kernel launches), of the algorithm and of the scheduling: each
operator's latency is the best over a vectorised search of tilings (:mod:`.operators`,
:mod:`.tiles`), and a block's is composed from its operators (:mod:`.blocks`).
"""

from __future__ import annotations

from ...dynamic.spec import StageSpec
from ...models.structure import BlockShape, ModelShape
from ...models.vit_structure import TransformerBlockShape
from ..interface import BlockDensity, LatencyModel
from . import blocks, transformer


class AnalyticModel(LatencyModel):
    """The paper's operators on ``hardware`` (a preset, a hand-written spec, or a profile's fitted parameters);
    CNN blocks by :mod:`.blocks`, vision transformer blocks by :mod:`.transformer`."""

    def block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> dict[str, float]:
        if isinstance(block, TransformerBlockShape):
            return transformer.block_seconds(self.hardware, block, spec, density)
        return blocks.block_seconds(self.hardware, block, spec, density)

    def reference_block_seconds(self, block: BlockShape, spec: StageSpec, density: BlockDensity) -> float | None:
        if isinstance(block, TransformerBlockShape):
            return transformer.reference_block_seconds(self.hardware, block, spec, density)
        return None

    def stem_seconds(self, shape: ModelShape) -> float:
        if shape.family == "vit":
            return transformer.stem_seconds(self.hardware, shape)
        return blocks.stem_seconds(self.hardware, shape)

    def head_seconds(self, shape: ModelShape) -> float:
        if shape.family == "vit":
            return transformer.head_seconds(self.hardware, shape)
        return blocks.head_seconds(self.hardware, shape)


__all__ = ["AnalyticModel"]
