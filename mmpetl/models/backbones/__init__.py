from .tv_mobilenet_v2 import TorchvisionMobileNetV2

__all__ = ['TorchvisionMobileNetV2']
