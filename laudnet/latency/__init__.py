"""Latency prediction for static and dynamic networks.

``predict(model, hardware, mode=..., density=...)`` walks a backbone's blocks and adds up their
latencies on a latency model: the paper's analytic GPU model (:mod:`.analytic`, for a preset, a
YAML spec or an instance of :class:`Hardware`) or a profile calibrated on the user's device
(:mod:`.calibrated`, written by :func:`.device.calibrate.calibrate`); :func:`latency_model` picks
one, and everything that predicts takes either.

* :mod:`.device`: measuring the sparse engine here — calibrating a profile, validating it on
  held-out configurations;
* :mod:`.design`: per-stage granularity search (:func:`search_granularity`) and the configuration
  predicted to meet a latency target (:func:`.design.suggest.suggest`).
"""

from .design.search import GranularityResult, StageChoice, search_granularity
from .hardware import PRESETS, Hardware, get_hardware, list_presets, load_hardware, save_hardware
from .interface import BlockDensity, BlockLatency, LatencyModel
from .prediction import LatencyReport, block_latency, latency_model, predict, resolve_shape
from .summary import RunSummary, block_densities, read_summary

__all__ = [
    "BlockDensity",
    "BlockLatency",
    "GranularityResult",
    "Hardware",
    "LatencyModel",
    "LatencyReport",
    "PRESETS",
    "RunSummary",
    "StageChoice",
    "block_densities",
    "block_latency",
    "get_hardware",
    "latency_model",
    "list_presets",
    "load_hardware",
    "predict",
    "read_summary",
    "resolve_shape",
    "save_hardware",
    "search_granularity",
]
