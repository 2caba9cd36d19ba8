"""Latency prediction for static and dynamic networks from an analytical hardware model.

``predict(model, hardware, mode=..., density=...)`` walks a backbone's blocks and adds up
operator latencies (:mod:`.operators`) on a :class:`Hardware` (a preset, a YAML spec or
an instance); ``search_granularity`` picks per stage the spatial/channel granularity
with the lowest predicted latency.

On the user's own device, :func:`.calibrate.calibrate` measures the sparse engine and fits a
profile (a :class:`Hardware` with engine costs), :func:`.validate.validate` compares its
predictions with measurements on held-out configurations, and :func:`.suggest.suggest` picks the
mode, granularities and density predicted to meet a latency target.
"""

from .blocks import BlockDensity, BlockLatency, block_latency
from .hardware import PRESETS, Hardware, get_hardware, list_presets, load_hardware, save_hardware
from .model import LatencyReport, predict, resolve_shape
from .search import GranularityResult, StageChoice, search_granularity
from .summary import RunSummary, block_densities, read_summary

__all__ = [
    "BlockDensity",
    "BlockLatency",
    "GranularityResult",
    "Hardware",
    "LatencyReport",
    "PRESETS",
    "RunSummary",
    "block_densities",
    "block_latency",
    "get_hardware",
    "list_presets",
    "load_hardware",
    "predict",
    "read_summary",
    "resolve_shape",
    "save_hardware",
    "search_granularity",
    "StageChoice",
]
