from .backbones import TorchvisionMobileNetV2  # noqa: F401
from .petl_model import PETLModel, build_inner_model
from .prefix_init import init_prefixes_from_activations, pending_prefixes

__all__ = ['PETLModel', 'build_inner_model', 'TorchvisionMobileNetV2',
           'init_prefixes_from_activations', 'pending_prefixes']
