"""Sparse inference: run a LAUD model computing only what its masks select.

``convert(model)`` builds the engine; ``calibrate_density`` sets a model's gates to a chosen
density without training; ``compare_latency`` times the engine beside the masked and the
static model.
"""

from .benchmark import LatencyComparison, compare_latency
from .calibration import DensityCalibration, calibrate_density
from .executor import SparseModel, convert

__all__ = ["DensityCalibration", "LatencyComparison", "SparseModel", "calibrate_density", "compare_latency", "convert"]
