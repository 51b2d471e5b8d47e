"""MMCV's sigmoid focal loss on fp32 logits when they come in fp16/bf16.

Nothing here changes MMDetection until :func:`patch_focal_loss_fp32` is
called (by :func:`mmpetl.apply_patches`; :func:`unpatch_focal_loss_fp32`
puts MMDetection's name back).

Why: MMCV 2.1's CUDA kernel ``sigmoid_focal_loss_forward_cuda_kernel``
dispatches float, double and half, not bfloat16. Under ``--amp bfloat16``
the classification logits of Deformable DETR and DINO (outputs of a Linear,
bf16 under autocast) reach it, and every training step on a GPU raised
``NotImplementedError`` (measured on an H200, 2026-12-04,
``tests/test_cuda/test_train_step_cuda.py::test_train_step[bf16]``).
Under fp16 the kernel runs, but computes the loss and its gradient in
half precision.

MMDetection's ``FocalLoss`` reaches MMCV's op through the module-level
function ``sigmoid_focal_loss`` of ``mmdet.models.losses.focal_loss``
(looked up at each call), on CUDA tensors only (its own PyTorch code runs
off CUDA and is left alone). Once patched, that name runs MMDetection's
function with fp32 logits (and weight) whenever the logits are fp16 or
bf16, with autocast off; other dtypes reach it as they are. The loss comes
back in fp32, as autocast computes losses (it feeds no later layer); the
gradient reaches the logits in their own dtype through the cast.
"""
import sys

import torch

__all__ = ['patch_focal_loss_fp32', 'unpatch_focal_loss_fp32',
           'focal_loss_fp32_patched', 'sigmoid_focal_loss_fp32']

HALF = (torch.float16, torch.bfloat16)
MODULE = 'mmdet.models.losses.focal_loss'


def _module():
    from mmdet.models.losses import focal_loss
    return focal_loss


def sigmoid_focal_loss_fp32(original):
    """``original`` (MMDetection's ``sigmoid_focal_loss``, same arguments)
    on fp32 logits when they come in fp16 or bf16."""

    def run(pred, target, weight=None, gamma=2.0, alpha=0.25,
            reduction='mean', avg_factor=None):
        if pred.dtype not in HALF:
            return original(pred, target, weight, gamma, alpha, reduction,
                            avg_factor)
        if weight is not None and weight.is_floating_point():
            weight = weight.float()
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return original(pred.float(), target, weight, gamma, alpha,
                            reduction, avg_factor)

    run.original = original
    return run


def focal_loss_fp32_patched() -> bool:
    """Whether :func:`patch_focal_loss_fp32` is in effect in MMDetection
    (False while MMDetection's losses are not imported: asking imports
    nothing)."""
    module = sys.modules.get(MODULE)
    return module is not None and getattr(
        module.sigmoid_focal_loss, 'original', None) is not None


def patch_focal_loss_fp32() -> bool:
    """Wrap ``mmdet.models.losses.focal_loss.sigmoid_focal_loss`` (see the
    module doc). Returns True if this call installed it."""
    module = _module()
    if focal_loss_fp32_patched():
        return False
    module.sigmoid_focal_loss = sigmoid_focal_loss_fp32(
        module.sigmoid_focal_loss)
    return True


def unpatch_focal_loss_fp32() -> bool:
    """Put MMDetection's ``sigmoid_focal_loss`` back. Returns True if it
    was patched."""
    module = _module()
    if not focal_loss_fp32_patched():
        return False
    module.sigmoid_focal_loss = module.sigmoid_focal_loss.original
    return True
