"""MMCV's CUDA deformable attention vs mmpetl's op (forward, gradients).

mmpetl runs :func:`mmpetl.ops.ms_deform_attn` wherever MMCV runs its
PyTorch fallback, and MMCV's CUDA kernel (``ext_module``) on CUDA tensors.
Both must compute one function: here they get the same inputs on CUDA.

Inputs: 3 levels (6x5, 3x4, 2x2), 2 points, 3 heads of 4 dims, 7 queries;
sampling positions are drawn as pixel coordinates at least 0.01 px away
from every pixel-centre line, some in the outer ring where part of the
bilinear footprint is zero padding. Bilinear sampling is not differentiable
on those lines (the gradient jumps by a whole pixel's value difference), so
rounding of a position computed two ways (MMCV: ``loc * W - 0.5``,
``grid_sample``: ``((2 * loc - 1 + 1) * W - 1) / 2``) must not push a point
across one.

Tolerances (chosen, not measured: no GPU was lent when they were written):

* fp64: ``atol = rtol = 1e-10``. Both sum a few dozen terms of magnitude
  <= ~50; reordering (MMCV's atomicAdd, level-by-level sums) costs
  ~1e-14.
* fp32: ``atol = rtol = 1e-4``. The positions above differ by a few ulp
  (~1e-6 px at W <= 6), times value slopes of a few units, over 6 samples
  per head: <= ~5e-5 in the output; the location gradients are scaled by
  the map size (magnitudes up to ~50, relative error ~1e-6).
  A half-pixel shift, checked in the test, moves the output by far more.

MMCV 2.1's kernel dispatches float, double and half (no bfloat16); fp32
and fp64 are compared here, and the module is run under bf16/fp16
autocast, where mmpetl feeds the kernel fp32 with autocast off.
"""
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda_module

from mmpetl.ops import FP32MSDAFunction, ms_deform_attn, msda_backend
from tests.test_cuda.common import CUDA_MARKS, DEVICE, needs_cuda_kernel

pytestmark = CUDA_MARKS + [needs_cuda_kernel]

SHAPES = [[6, 5], [3, 4], [2, 2]]  # (h, w) per level
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10),
       torch.float32: dict(atol=1e-4, rtol=1e-4)}
IM2COL_STEP = 64  # MultiScaleDeformableAttention's default


def mmcv_function():
    """MMCV's own ``MultiScaleDeformableAttnFunction`` (mmpetl's patch
    puts an fp32 wrapper in its place and keeps the original)."""
    fn = msda_module.MultiScaleDeformableAttnFunction
    if fn is FP32MSDAFunction:
        fn = FP32MSDAFunction.original
    assert fn is not None and fn is not FP32MSDAFunction
    return fn


@pytest.fixture()
def fp32_patch():
    """mmpetl's fp32 MSDA patch in effect (as PETLModel applies it);
    removed after the test if this test installed it."""
    from mmpetl.ops import msda_fp32
    installed = msda_fp32.patch_msda_fp32()
    yield
    if installed and hasattr(msda_fp32, 'unpatch_msda_fp32'):
        msda_fp32.unpatch_msda_fp32()


def inputs(bs=2, heads=3, dims=4, queries=7, points=2, seed=0):
    """fp64 CPU ``value, shapes, level_start, locations, weights``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SHAPES)
    areas = shapes[:, 0] * shapes[:, 1]
    level_start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value = torch.randn(bs, int(areas.sum()), heads, dims, generator=gen,
                        dtype=torch.float64)
    levels = len(SHAPES)
    # (L, 1, 2): (w, h) per level, x first, against (..., L, P, 2)
    size = shapes.flip(-1).to(torch.float64)[:, None]
    shape = (bs, queries, heads, levels, points, 2)
    # pixel coordinate p = cell + frac, cell in [-1, size - 1], frac in
    # [0.01, 0.99]; loc = (p + 0.5) / size (align_corners=False)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    cell = torch.floor(u * (size + 1)) - 1
    frac = 0.01 + 0.98 * torch.rand(shape, generator=gen, dtype=torch.float64)
    loc = (cell + frac + 0.5) / size
    weights = torch.rand(shape[:-1], generator=gen, dtype=torch.float64)
    return value, shapes, level_start, loc, weights


def run(fn, value, loc, weights, grad_out):
    value, loc, weights = (t.detach().clone().requires_grad_()
                           for t in (value, loc, weights))
    out = fn(value, loc, weights)
    grads = torch.autograd.grad(out, (value, loc, weights), grad_out)
    return out.detach(), grads


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64],
                         ids=['fp32', 'fp64'])
def test_mmcv_cuda_op_equals_mmpetl_op(dtype):
    value, shapes, level_start, loc, weights = inputs()
    cuda = dict(device=DEVICE, dtype=dtype)
    value, loc, weights = (t.to(**cuda) for t in (value, loc, weights))
    shapes, level_start = shapes.to(DEVICE), level_start.to(DEVICE)
    grad_out = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(
        1), dtype=torch.float64).to(**cuda)
    mmcv = mmcv_function()

    def theirs(v, p, w):
        return mmcv.apply(v, shapes, level_start, p, w, IM2COL_STEP)

    def ours(v, p, w):
        return ms_deform_attn(v, shapes, p, w)

    out_mmcv, grads_mmcv = run(theirs, value, loc, weights, grad_out)
    out_ours, grads_ours = run(ours, value, loc, weights, grad_out)
    assert out_mmcv.device.type == out_ours.device.type == DEVICE
    assert out_mmcv.dtype == out_ours.dtype == dtype
    torch.testing.assert_close(out_ours, out_mmcv, **TOL[dtype])
    for name, a, b in zip(('value', 'locations', 'weights'), grads_ours,
                          grads_mmcv):
        assert a.device.type == DEVICE and a.shape == b.shape, name
        assert b.abs().max() > 0.1, name  # not a comparison of zeros
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)
    # the tolerance tells a half-pixel error apart
    shifted = ours(value, loc + 0.5 / shapes.flip(-1).to(dtype)[:, None],
                   weights)
    assert (shifted - out_mmcv).abs().max() > 100 * TOL[dtype]['atol']
    if dtype is torch.float64:  # and mmpetl's op on the CPU agrees too
        out_cpu, grads_cpu = run(
            lambda v, p, w: ms_deform_attn(v, shapes.cpu(), p, w),
            value.cpu(), loc.cpu(), weights.cpu(), grad_out.cpu())
        torch.testing.assert_close(out_cpu, out_mmcv.cpu(), **TOL[dtype])
        for a, b in zip(grads_cpu, grads_mmcv):
            torch.testing.assert_close(a, b.cpu(), **TOL[dtype])


@pytest.mark.parametrize('amp', [torch.bfloat16, torch.float16],
                         ids=['bf16', 'fp16'])
def test_module_under_autocast_feeds_the_cuda_op_fp32(amp, monkeypatch,
                                                     fp32_patch):
    """MultiScaleDeformableAttention on CUDA runs MMCV's kernel; under
    autocast mmpetl gives it fp32 with autocast off (the kernel has no
    bf16 and, under fp16, would cast the locations to fp16)."""
    assert 'CUDA op' in msda_backend(torch.device(DEVICE))
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(
        embed_dims=32, num_heads=4, num_levels=2, num_points=2,
        batch_first=True).to(DEVICE).eval()
    shapes = torch.tensor([[6, 5], [3, 4]], device=DEVICE)
    level_start = torch.tensor([0, 30], device=DEVICE)
    query = torch.randn(2, 7, 32, device=DEVICE)
    value = torch.randn(2, 42, 32, device=DEVICE)
    ref = torch.rand(2, 7, 2, 2, device=DEVICE)
    kwargs = dict(query=query, value=value, reference_points=ref,
                  spatial_shapes=shapes, level_start_index=level_start)
    seen = []
    original = FP32MSDAFunction.original

    class Recording:

        @staticmethod
        def apply(*args):
            seen.append(([a.dtype for a in args[:5]],
                         torch.is_autocast_enabled('cuda')))
            return original.apply(*args)

    monkeypatch.setattr(FP32MSDAFunction, 'original', Recording)
    with torch.no_grad():
        fp32 = attn(**kwargs)
        with torch.autocast('cuda', dtype=amp):
            mixed = attn(**kwargs)
    assert len(seen) == 2
    dtypes, autocast_on = seen[1]
    assert autocast_on is False
    assert dtypes[0] == dtypes[3] == dtypes[4] == torch.float32
    assert torch.isfinite(mixed).all()
    # only the projections around the op ran in low precision
    torch.testing.assert_close(mixed.float(), fp32, atol=0.05, rtol=0.05)
