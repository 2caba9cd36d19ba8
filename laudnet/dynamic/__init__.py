"""The unified dynamic formulation shared by every backbone: spec, maskers, gates, geometry, stats."""

from .gates import TEMPERATURE_SCHEDULES, gate, temperature_at
from .maskers import ChannelMasker, SpatialMasker
from .spec import MODES, DynamicSpec, StageSpec
from .stats import BlockStats, DensityMeter, ModelStats

__all__ = [
    "MODES", "TEMPERATURE_SCHEDULES", "BlockStats", "ChannelMasker", "DensityMeter", "DynamicSpec", "ModelStats",
    "SpatialMasker", "StageSpec", "gate", "temperature_at",
]
