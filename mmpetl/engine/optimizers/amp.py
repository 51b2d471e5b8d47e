"""Mixed precision without loss scaling where bfloat16 does not need it.

bfloat16 keeps fp32's 8-bit exponent, so gradients do not underflow and a
loss scaler only costs time (an unscale pass, inf/NaN checks, steps skipped
while the scale settles). MMEngine's ``AmpOptimWrapper`` builds a dynamic
``GradScaler`` whatever the dtype; ``mmpetl.AmpOptimWrapper`` disables it
under ``dtype='bfloat16'`` when ``loss_scale`` is left at ``'dynamic'``. An
explicit float or dict ``loss_scale`` is honoured, and float16 keeps dynamic
scaling (its 5-bit exponent needs it). ``tools/train.py --amp`` uses it.
"""
import torch
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper

from mmpetl.registry import OPTIM_WRAPPERS

__all__ = ['AmpOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """MMEngine's ``AmpOptimWrapper``; no loss scaling under bfloat16.

    Args:
        loss_scale (str | float | dict): as MMEngine's; ``'dynamic'`` (the
            default) means no scaling for bfloat16.
        dtype (str | torch.dtype, optional): the autocast dtype.
        **kwargs: passed to MMEngine's ``AmpOptimWrapper``.
    """

    def __init__(self, loss_scale='dynamic', dtype=None, **kwargs) -> None:
        super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
        if self.cast_dtype is torch.bfloat16 and loss_scale == 'dynamic':
            # disabled: scale() returns the loss, step() steps, update() and
            # unscale_() do nothing, state_dict() is empty
            self.loss_scaler = torch.amp.GradScaler(enabled=False)
