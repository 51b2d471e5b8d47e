"""Multi-scale deformable attention in PyTorch that keeps only its inputs.

MMCV runs deformable attention with its CUDA op on CUDA tensors and with
``multi_scale_deformable_attn_pytorch`` everywhere else (CPU). The two
differ in what they keep for backward:

* MMCV's CUDA op saves its inputs (values, sampling locations, attention
  weights) and re-samples inside its backward kernel;
* the PyTorch fallback goes through autograd, which keeps the bilinear
  samples of every query, head, level and point (``torch.stack`` of the
  ``grid_sample`` results): ``levels x points`` (16 in Deformable DETR)
  times the size of the layer's output, per attention layer, plus a copy
  of the values and grids per level.

:func:`ms_deform_attn` computes the same function as the fallback and keeps
what the CUDA op keeps. Forward: per level, ``grid_sample`` and the
attention-weighted sum over points, accumulated (no stack of all levels).
Backward: per level, the samples are computed again (one ``grid_sample``)
for the attention weights' gradient, and ``grid_sampler_2d_backward``
gives those of the values and the locations. Cost: one more ``grid_sample``
per level in backward; the largest transient is a few times one level's
samples instead of all of them.

It is a ``torch.library`` custom op (``torch.ops.mmpetl.ms_deform_attn``,
its backward another: opaque to ``torch.compile``, and torch's selective
checkpointing can name it). Inside a layer that mmpetl checkpoints, its
forward output is kept and the recomputation returns it instead of
sampling again (:mod:`mmpetl.ops.replay`).
:func:`mmpetl.ops.patch_msda_fp32` installs it as MMCV's fallback.
Second-order gradients are not supported (neither are they by MMCV's CUDA
op).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .replay import active_record

__all__ = ['ms_deform_attn', 'ms_deform_attn_backward',
           'ms_deform_attn_pytorch']

_BILINEAR, _ZEROS = 0, 0  # grid_sampler's interpolation and padding modes


def _levels(spatial_shapes: Tensor) -> List[Tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def _level_value(value: Tensor, start: int, h: int, w: int) -> Tensor:
    """(bs, Lv, M, D) -> level's (bs*M, D, h, w)."""
    bs, _, heads, dims = value.shape
    return value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(
        bs * heads, dims, h, w)


def _level_grid(sampling_locations: Tensor, level: int) -> Tensor:
    """(bs, Lq, M, L, P, 2) in [0, 1] -> (bs*M, Lq, P, 2) in [-1, 1]."""
    loc = sampling_locations[:, :, :, level]
    return (2 * loc - 1).transpose(1, 2).flatten(0, 1)


def _level_weights(attention_weights: Tensor, level: int) -> Tensor:
    """(bs, Lq, M, L, P) -> (bs*M, 1, Lq, P)."""
    return attention_weights[:, :, :, level].transpose(1, 2).flatten(
        0, 1).unsqueeze(1)


def _sample(value_l: Tensor, grid_l: Tensor) -> Tensor:
    """Bilinear samples (bs*M, D, Lq, P), as MMCV's fallback takes them."""
    return F.grid_sample(value_l, grid_l, mode='bilinear',
                         padding_mode='zeros', align_corners=False)


@torch.library.custom_op('mmpetl::ms_deform_attn', mutates_args=())
def ms_deform_attn(value: Tensor, spatial_shapes: Tensor,
                   sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention (MMCV's fallback's function).

    Args:
        value (Tensor): (bs, num_keys, num_heads, head_dims).
        spatial_shapes (Tensor): (num_levels, 2) int, (h, w) per level;
            the keys are the levels' maps flattened, level after level.
        sampling_locations (Tensor): (bs, num_queries, num_heads,
            num_levels, num_points, 2), (x, y) in [0, 1].
        attention_weights (Tensor): (bs, num_queries, num_heads,
            num_levels, num_points).

    Returns:
        Tensor: (bs, num_queries, num_heads * head_dims).
    """
    bs, _, heads, dims = value.shape
    num_queries = sampling_locations.shape[1]
    out = value.new_zeros(bs * heads, dims, num_queries)
    start = 0
    for level, (h, w) in enumerate(_levels(spatial_shapes)):
        samples = _sample(_level_value(value, start, h, w),
                          _level_grid(sampling_locations, level))
        out += (samples * _level_weights(attention_weights, level)).sum(-1)
        start += h * w
    return out.view(bs, heads * dims, num_queries).transpose(1, 2).contiguous()


@ms_deform_attn.register_fake
def _(value, spatial_shapes, sampling_locations, attention_weights):
    bs, _, heads, dims = value.shape
    return value.new_empty(bs, sampling_locations.shape[1], heads * dims)


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(value, spatial_shapes, sampling_locations,
                          attention_weights)


@torch.library.custom_op('mmpetl::ms_deform_attn_backward', mutates_args=())
def ms_deform_attn_backward(grad_out: Tensor, value: Tensor,
                            spatial_shapes: Tensor,
                            sampling_locations: Tensor,
                            attention_weights: Tensor,
                            output_mask: List[bool]
                            ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_attn`'s value, sampling locations and
    attention weights (an empty tensor where ``output_mask`` is False)."""
    need_value, need_loc, need_weights = output_mask
    bs, _, heads, dims = value.shape
    num_queries = sampling_locations.shape[1]
    # (bs, Lq, M*D) -> (bs*M, D, Lq, 1)
    grad = grad_out.reshape(bs, num_queries, heads, dims).permute(
        0, 2, 3, 1).reshape(bs * heads, dims, num_queries, 1)
    # a fresh empty tensor per unneeded gradient (returns may not alias)
    grad_value = value.new_zeros(value.shape if need_value else 0)
    grad_loc = sampling_locations.new_zeros(
        sampling_locations.shape if need_loc else 0)
    grad_weights = attention_weights.new_zeros(
        attention_weights.shape if need_weights else 0)
    start = 0
    for level, (h, w) in enumerate(_levels(spatial_shapes)):
        value_l = _level_value(value, start, h, w)
        grid_l = _level_grid(sampling_locations, level)
        if need_weights:  # d out / d weight = the samples, taken again
            grad_w = (_sample(value_l, grid_l) * grad).sum(1)  # (bs*M,Lq,P)
            grad_weights[:, :, :, level] = grad_w.view(
                bs, heads, num_queries, -1).transpose(1, 2)
        if need_value or need_loc:
            grad_v, grad_g = torch.ops.aten.grid_sampler_2d_backward(
                grad * _level_weights(attention_weights, level), value_l,
                grid_l, _BILINEAR, _ZEROS, False, [need_value, need_loc])
            if need_value:  # (bs*M, D, h, w) -> (bs, h*w, M, D)
                grad_value[:, start:start + h * w] = grad_v.view(
                    bs, heads, dims, h * w).permute(0, 3, 1, 2)
            if need_loc:  # grid = 2 * loc - 1
                grad_loc[:, :, :, level] = 2 * grad_g.view(
                    bs, heads, num_queries, -1, 2).transpose(1, 2)
        start += h * w
    return grad_value, grad_loc, grad_weights


@ms_deform_attn_backward.register_fake
def _(grad_out, value, spatial_shapes, sampling_locations,
      attention_weights, output_mask):
    return tuple(t.new_empty(t.shape if need else 0) for t, need in zip(
        (value, sampling_locations, attention_weights), output_mask))


def _backward(ctx, grad_out: Tensor):
    value, spatial_shapes, sampling_locations, attention_weights = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad  # value, shapes, locations, weights[, ...]
    mask = [needs[0], needs[2], needs[3]]
    grads = ms_deform_attn_backward(grad_out, value, spatial_shapes,
                                    sampling_locations, attention_weights,
                                    mask)
    grad_value, grad_loc, grad_weights = (g if m else None
                                          for g, m in zip(grads, mask))
    return grad_value, None, grad_loc, grad_weights


ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)


class _KeptOutput(torch.autograd.Function):
    """:func:`ms_deform_attn` whose output was computed before (the forward
    of a checkpointed layer): returns a copy of it and saves the inputs
    for the op's backward."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations,
                attention_weights, kept):
        expected = (value.shape[0], sampling_locations.shape[1],
                    value.shape[2] * value.shape[3])
        if tuple(kept.shape) != expected:
            raise RuntimeError(
                f'mmpetl activation checkpointing: the recomputed '
                f'deformable attention expects an output of shape '
                f'{expected}, the forward kept {tuple(kept.shape)}')
        ctx.save_for_backward(value, spatial_shapes, sampling_locations,
                              attention_weights)
        return kept.clone()

    @staticmethod
    def backward(ctx, grad_out):
        grad_value, _, grad_loc, grad_weights = _backward(ctx, grad_out)
        return grad_value, None, grad_loc, grad_weights, None


def ms_deform_attn_pytorch(value: Tensor, value_spatial_shapes: Tensor,
                           sampling_locations: Tensor,
                           attention_weights: Tensor) -> Tensor:
    """Drop-in for MMCV's ``multi_scale_deformable_attn_pytorch`` (same
    arguments and result) through :func:`ms_deform_attn`; inside a
    checkpointed layer that keeps ``'ms_deform_attn'``, the recomputation
    reuses the forward's output (:mod:`mmpetl.ops.replay`)."""
    if not isinstance(value_spatial_shapes, Tensor):
        value_spatial_shapes = torch.as_tensor(value_spatial_shapes,
                                               dtype=torch.long)
    inputs = (value, value_spatial_shapes, sampling_locations,
              attention_weights)
    record = active_record('ms_deform_attn')
    if record is None:
        return ms_deform_attn(*inputs)
    return record.output(lambda: ms_deform_attn(*inputs),
                         lambda kept: _KeptOutput.apply(*inputs, kept))
