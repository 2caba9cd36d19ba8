"""Sparse inference: run a LAUD model computing only what its masks select.

``convert(model)`` builds the engine; ``export_onnx`` writes it as one ONNX file;
``set_gate_density`` sets a model's gates to a chosen density without training;
``compare_latency`` times the engine beside the masked and the static model.
"""

from .._deprecation import module_getattr
from .benchmark import LatencyComparison, compare_latency
from .density import GateDensity, set_gate_density
from .executor import SparseModel, convert
from .export import ExportCheck, export_onnx

__all__ = ["ExportCheck", "GateDensity", "LatencyComparison", "SparseModel", "compare_latency", "convert",
           "export_onnx", "set_gate_density"]

__getattr__ = module_getattr(__name__, {
    "calibrate_density": "laudnet.sparse.density:set_gate_density",
    "DensityCalibration": "laudnet.sparse.density:GateDensity",
})
