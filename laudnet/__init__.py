"""laudnet: latency-aware dynamic networks for image recognition."""

from .dynamic import DynamicSpec, StageSpec
from .models import DynamicOutput, create_model, list_models, model_shape

__version__ = "0.1.0"

__all__ = ["DynamicOutput", "DynamicSpec", "StageSpec", "__version__", "create_model", "list_models", "model_shape"]
