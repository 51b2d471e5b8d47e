"""Which multi-scale deformable attention runs, in fp32 inside autocast.

Nothing here changes MMCV until :func:`patch_msda_fp32` is called (by
:func:`mmpetl.apply_patches`, which ``PETLModel`` and mmpetl's tools call;
:func:`unpatch_msda_fp32` puts MMCV's functions back). Once patched:

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
up to ~1 pixel per 256). Inside autocast, both MSDA paths - MMCV's CUDA op
and its PyTorch fallback - run in fp32 with autocast off: values, sampling
locations and attention weights in fp32. Everything around the op (the
Linear projections) still runs in the autocast dtype.

The caller's dtype and device are kept: the result always has the dtype of
``value``, as MMCV's op returns it (inside autocast the fp32 result is cast
back to it; the output projection that follows would cast it to the
autocast dtype anyway). Outside autocast the inputs reach the op as they
are: a bfloat16 or float16 module computes in its own dtype, as with MMCV
alone.
"""
import contextlib
from typing import Iterator

import torch

from .msda import ms_deform_attn_pytorch

__all__ = ['patch_msda_fp32', 'unpatch_msda_fp32', 'msda_fp32_patched',
           'msda_backend', 'msda_fallback']

#: the PyTorch fallback that runs: 'mmpetl' (keeps its inputs) or 'mmcv'
_FALLBACK = {'kind': 'mmpetl'}
FALLBACKS = ('mmpetl', 'mmcv')


@contextlib.contextmanager
def msda_fallback(kind: str) -> Iterator:
    """Run deformable attention off CUDA with ``kind``'s PyTorch code:
    ``'mmpetl'`` (the default; :func:`mmpetl.ops.ms_deform_attn`) or
    ``'mmcv'`` (MMCV's ``multi_scale_deformable_attn_pytorch``, which keeps
    every bilinear sample for backward). Same function, same gradients.
    Only while :func:`patch_msda_fp32` is in effect (without it MMCV runs
    its own)."""
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


def _autocast_on(tensor: torch.Tensor) -> bool:
    """Whether autocast is enabled for ``tensor``'s device type."""
    kind = tensor.device.type
    try:
        return torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4 has no device argument
        return (torch.is_autocast_cpu_enabled() if kind == 'cpu' else
                torch.is_autocast_enabled())


def _run(op, value, sampling_locations, attention_weights):
    """``op(value, sampling_locations, attention_weights)`` in fp32 with
    autocast off when autocast is on (the result cast back to ``value``'s
    dtype); with the tensors as given otherwise."""
    if not _autocast_on(value):
        return op(value, sampling_locations, attention_weights)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = op(_fp32(value), _fp32(sampling_locations),
                 _fp32(attention_weights))
    return out.to(value.dtype)


class FP32MSDAFunction:
    """Drop-in for ``MultiScaleDeformableAttnFunction`` (``.apply``): in
    fp32 inside autocast, the result in ``value``'s dtype."""

    original = None

    @classmethod
    def apply(cls, value, spatial_shapes, level_start_index,
              sampling_locations, attention_weights, im2col_step):
        return _run(
            lambda v, loc, w: cls.original.apply(
                v, spatial_shapes, level_start_index, loc, w, im2col_step),
            value, sampling_locations, attention_weights)


def _fp32_pytorch_fallback(original):

    def msda_pytorch_fp32(value, spatial_shapes, sampling_locations,
                          attention_weights):
        run = original if _FALLBACK['kind'] == 'mmcv' else \
            ms_deform_attn_pytorch
        return _run(lambda v, loc, w: run(v, spatial_shapes, loc, w),
                    value, sampling_locations, attention_weights)

    msda_pytorch_fp32.original = original
    return msda_pytorch_fp32


def msda_fp32_patched() -> bool:
    """Whether :func:`patch_msda_fp32` is in effect in MMCV."""
    from mmcv.ops import multi_scale_deform_attn as msda
    return msda.MultiScaleDeformableAttnFunction is FP32MSDAFunction


def patch_msda_fp32() -> bool:
    """Install the fp32 wrappers, and mmpetl's PyTorch fallback, in
    ``mmcv.ops.multi_scale_deform_attn`` (where
    ``MultiScaleDeformableAttention.forward`` looks them up).

    Returns:
        bool: True if this call installed them (False: already there).
    """
    from mmcv.ops import multi_scale_deform_attn as msda
    if msda_fp32_patched():
        return False
    FP32MSDAFunction.original = msda.MultiScaleDeformableAttnFunction
    msda.MultiScaleDeformableAttnFunction = FP32MSDAFunction
    msda.multi_scale_deformable_attn_pytorch = _fp32_pytorch_fallback(
        msda.multi_scale_deformable_attn_pytorch)
    return True


def unpatch_msda_fp32() -> bool:
    """Put MMCV's own ``MultiScaleDeformableAttnFunction`` and
    ``multi_scale_deformable_attn_pytorch`` back.

    Returns:
        bool: True if this call removed the wrappers.
    """
    from mmcv.ops import multi_scale_deform_attn as msda
    if not msda_fp32_patched():
        return False
    msda.MultiScaleDeformableAttnFunction = FP32MSDAFunction.original
    msda.multi_scale_deformable_attn_pytorch = \
        msda.multi_scale_deformable_attn_pytorch.original
    return True


def msda_backend(device: torch.device) -> str:
    """Which MSDA implementation runs for tensors on ``device`` (``fp32``:
    under autocast it computes in fp32)."""
    from mmcv.ops import multi_scale_deform_attn as msda
    if device.type == 'cuda' and msda.IS_CUDA_AVAILABLE:
        return "MMCV's CUDA op (ext_module.ms_deform_attn_forward), fp32"
    if device.type == 'mlu' and msda.IS_MLU_AVAILABLE:
        return "MMCV's MLU op, fp32"
    if not msda_fp32_patched():
        return ("PyTorch fallback (MMCV's multi_scale_deformable_attn_pytorch"
                "; mmpetl's patches not applied: mmpetl.apply_patches())")
    which = ("MMCV's multi_scale_deformable_attn_pytorch"
             if _FALLBACK['kind'] == 'mmcv' else
             'mmpetl.ops.ms_deform_attn, keeps its inputs only')
    return (f'PyTorch fallback ({which}; grid_sample; MMCV runs its CUDA op '
            f'only for CUDA tensors), fp32')
