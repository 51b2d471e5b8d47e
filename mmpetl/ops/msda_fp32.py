"""Which multi-scale deformable attention runs, in fp32 inside autocast.

Off CUDA, MMCV runs its PyTorch fallback; mmpetl replaces it with
:func:`mmpetl.ops.ms_deform_attn` (same function, keeps only its inputs for
backward, as MMCV's CUDA op does: see :mod:`mmpetl.ops.msda`).
``msda_fallback('mmcv')`` runs MMCV's own fallback instead (benchmarks,
tests).

fp32 inside autocast (``--amp``):

MMCV 2.1's CUDA op has no bf16 kernel (NotImplementedError under bf16
autocast) and, under fp16 autocast, casts the sampling locations and
attention weights to the dtype of the (fp16) values: locations in [0, 1]
lose the precision that bilinear sampling needs (bf16 locations are off by
up to ~1 pixel per 256). mmpetl routes both MSDA paths - MMCV's CUDA op and
its PyTorch fallback - through one wrapper that runs them in fp32 with
autocast off: values, sampling locations and attention weights in fp32.
Everything around the op (the Linear projections) still runs in the
autocast dtype.
"""
import contextlib
from typing import Iterator

import torch

from .msda import ms_deform_attn_pytorch

__all__ = ['patch_msda_fp32', 'msda_backend', 'msda_fallback']

_PATCHED = False
#: the PyTorch fallback that runs: 'mmpetl' (keeps its inputs) or 'mmcv'
_FALLBACK = {'kind': 'mmpetl'}
FALLBACKS = ('mmpetl', 'mmcv')


@contextlib.contextmanager
def msda_fallback(kind: str) -> Iterator:
    """Run deformable attention off CUDA with ``kind``'s PyTorch code:
    ``'mmpetl'`` (the default; :func:`mmpetl.ops.ms_deform_attn`) or
    ``'mmcv'`` (MMCV's ``multi_scale_deformable_attn_pytorch``, which keeps
    every bilinear sample for backward). Same function, same gradients."""
    if kind not in FALLBACKS:
        raise ValueError(f'msda_fallback: {kind!r} is none of {FALLBACKS}')
    before = _FALLBACK['kind']
    _FALLBACK['kind'] = kind
    try:
        yield
    finally:
        _FALLBACK['kind'] = before


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


class FP32MSDAFunction:
    """Drop-in for ``MultiScaleDeformableAttnFunction`` (``.apply``)."""

    original = None

    @classmethod
    def apply(cls, value, spatial_shapes, level_start_index,
              sampling_locations, attention_weights, im2col_step):
        with torch.autocast(device_type=value.device.type, enabled=False):
            return cls.original.apply(_fp32(value), spatial_shapes,
                                      level_start_index,
                                      _fp32(sampling_locations),
                                      _fp32(attention_weights), im2col_step)


def _fp32_pytorch_fallback(original):

    def msda_pytorch_fp32(value, spatial_shapes, sampling_locations,
                          attention_weights):
        run = original if _FALLBACK['kind'] == 'mmcv' else \
            ms_deform_attn_pytorch
        with torch.autocast(device_type=value.device.type, enabled=False):
            return run(_fp32(value), spatial_shapes,
                       _fp32(sampling_locations), _fp32(attention_weights))

    msda_pytorch_fp32.original = original
    return msda_pytorch_fp32


def patch_msda_fp32() -> None:
    """Install the fp32 wrappers, and mmpetl's PyTorch fallback, in
    ``mmcv.ops.multi_scale_deform_attn`` (where
    ``MultiScaleDeformableAttention.forward`` looks them up). Idempotent."""
    global _PATCHED
    if _PATCHED:
        return
    from mmcv.ops import multi_scale_deform_attn as msda
    FP32MSDAFunction.original = msda.MultiScaleDeformableAttnFunction
    msda.MultiScaleDeformableAttnFunction = FP32MSDAFunction
    msda.multi_scale_deformable_attn_pytorch = _fp32_pytorch_fallback(
        msda.multi_scale_deformable_attn_pytorch)
    _PATCHED = True


def msda_backend(device: torch.device) -> str:
    """Which MSDA implementation runs for tensors on ``device``."""
    from mmcv.ops import multi_scale_deform_attn as msda
    if device.type == 'cuda' and msda.IS_CUDA_AVAILABLE:
        return "MMCV's CUDA op (ext_module.ms_deform_attn_forward), fp32"
    if device.type == 'mlu' and msda.IS_MLU_AVAILABLE:
        return "MMCV's MLU op, fp32"
    which = ("MMCV's multi_scale_deformable_attn_pytorch"
             if _FALLBACK['kind'] == 'mmcv' else
             'mmpetl.ops.ms_deform_attn, keeps its inputs only')
    return (f'PyTorch fallback ({which}; grid_sample; MMCV runs its CUDA op '
            f'only for CUDA tensors), fp32')
