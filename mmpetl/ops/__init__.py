from .msda_fp32 import FP32MSDAFunction, msda_backend, patch_msda_fp32

__all__ = ['patch_msda_fp32', 'msda_backend', 'FP32MSDAFunction']
