"""Sparse inference: run a LAUD model computing only what its masks select."""

from .calibration import DensityCalibration, calibrate_density
from .engine import SparseModel, convert

__all__ = ["DensityCalibration", "SparseModel", "calibrate_density", "convert"]
