"""LAUD backbones (ResNet, RegNetY, DeiT), their builders and the model registry."""

from . import builders as _builders  # noqa: F401  (registers the models)
from .backbone import DynamicBackbone, DynamicOutput, FeatureOutput
from .blocks import BlockMasks, DynamicBottleneck
from .checkpoint import checkpoint_metadata, model_from_checkpoint
from .official import from_official
from .builders import laud_regnet_y_1_6gf, laud_regnet_y_400mf, laud_regnet_y_800mf, laud_resnet50, laud_resnet101
from .registry import create_model, list_models, register_model, register_with_timm
from .regnet import LaudRegNet, LaudRegNetBlock
from .resnet import LaudBottleneck, LaudResNet
from .structure import ModelShape, model_shape, parse_input_size
from .vit import LaudViT, LaudViTBlock, laud_deit_base, laud_deit_small
from .weights import convert_official_state_dict, load_state_dict

register_with_timm()

__all__ = [
    "LaudViT", "LaudViTBlock", "laud_deit_base", "laud_deit_small",
    "BlockMasks", "DynamicBackbone", "DynamicBottleneck", "DynamicOutput", "FeatureOutput", "LaudBottleneck",
    "LaudRegNet", "LaudRegNetBlock", "LaudResNet", "ModelShape", "convert_official_state_dict", "create_model",
    "laud_regnet_y_1_6gf", "laud_regnet_y_400mf", "laud_regnet_y_800mf", "laud_resnet101", "laud_resnet50",
    "checkpoint_metadata", "from_official", "list_models", "load_state_dict", "model_from_checkpoint", "model_shape", "parse_input_size", "register_model",
]
