from .msda import (ms_deform_attn, ms_deform_attn_backward,
                   ms_deform_attn_pytorch)
from .replay import (REPLAYABLE, ReplayRecord, activated,
                     active_record, current_record)
from .focal_loss_fp32 import (focal_loss_fp32_patched, patch_focal_loss_fp32,
                              sigmoid_focal_loss_fp32,
                              unpatch_focal_loss_fp32)
from .msda_fp32 import (FP32MSDAFunction, msda_backend, msda_fallback,
                        msda_fp32_patched, patch_msda_fp32,
                        unpatch_msda_fp32)

__all__ = [
    'patch_msda_fp32', 'unpatch_msda_fp32', 'msda_fp32_patched',
    'msda_backend', 'msda_fallback', 'FP32MSDAFunction',
    'ms_deform_attn', 'ms_deform_attn_backward', 'ms_deform_attn_pytorch',
    'ReplayRecord', 'activated', 'active_record', 'current_record',
    'REPLAYABLE', 'patch_focal_loss_fp32', 'unpatch_focal_loss_fp32',
    'focal_loss_fp32_patched', 'sigmoid_focal_loss_fp32'
]
