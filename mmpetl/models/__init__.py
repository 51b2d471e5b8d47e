from .backbones import TorchvisionMobileNetV2  # noqa: F401
from .petl_model import PETLModel, build_inner_model

__all__ = ['PETLModel', 'build_inner_model', 'TorchvisionMobileNetV2']
