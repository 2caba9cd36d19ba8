"""Deprecated: gates set to a density are :mod:`laudnet.sparse.density` (``set_gate_density``)."""

from .._deprecation import module_getattr

__getattr__ = module_getattr(__name__, {
    "calibrate_density": "laudnet.sparse.density:set_gate_density",
    "DensityCalibration": "laudnet.sparse.density:GateDensity",
})
