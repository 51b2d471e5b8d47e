"""mmpetl.ops.ms_deform_attn: MMCV's PyTorch deformable attention, keeping
only its inputs for backward.

"Equal" to MMCV's fallback: fp64, forward within 1e-12 (measured 4e-16:
the same samples summed level by level instead of all at once), every
gradient within 1e-12 (measured 0).
"""
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda_module

from mmpetl.ops import (ReplayRecord, ms_deform_attn,
                        ms_deform_attn_pytorch, msda_backend, msda_fallback)
from tests.test_tuners.test_deformable_prefix import msda_inputs

SHAPES = torch.tensor([[6, 5], [3, 4], [2, 2]])
MMCV = msda_module.multi_scale_deformable_attn_pytorch.original
TOL = dict(atol=1e-12, rtol=0)


def inputs(bs=2, heads=3, dims=4, queries=7, points=2, dtype=torch.float64,
           shapes=SHAPES, seed=0):
    """value, shapes, locations (some outside [0, 1]: zero padding),
    weights; all but the shapes require grad."""
    torch.manual_seed(seed)
    levels = len(shapes)
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(bs, keys, heads, dims, dtype=dtype)
    loc = torch.rand(bs, queries, heads, levels, points, 2,
                     dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(bs, queries, heads, levels, points, dtype=dtype)
    return [value.requires_grad_(), shapes, loc.requires_grad_(),
            weights.requires_grad_()]


def grads_of(fn, args, grad_out):
    out = fn(*args)
    wrt = [a for a in args if a.requires_grad]
    return out, torch.autograd.grad(out, wrt, grad_out)


def test_equals_mmcv_fallback_forward_and_gradients():
    args = inputs()
    grad_out = torch.randn(2, 7, 12, dtype=torch.float64)
    ours, ours_grads = grads_of(ms_deform_attn, args, grad_out)
    mmcv, mmcv_grads = grads_of(MMCV, args, grad_out)
    assert ours.shape == (2, 7, 12)
    torch.testing.assert_close(ours, mmcv, **TOL)
    assert len(ours_grads) == 3
    for a, b in zip(ours_grads, mmcv_grads):
        torch.testing.assert_close(a, b, **TOL)


def test_gradcheck_and_opcheck():
    args = inputs(bs=1, heads=2, dims=3, queries=4)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, SHAPES, loc, w),
        (args[0], args[2], args[3]))
    # the op and its backward op: schema, fake tensors, autograd
    # registration, torch.compile's tracing
    torch.library.opcheck(ms_deform_attn, tuple(args))


@pytest.mark.parametrize('needs', [(True, False, False), (False, True, True),
                                   (False, False, True)])
def test_only_the_gradients_asked_for(needs):
    args = inputs()
    for tensor, need in zip((args[0], args[2], args[3]), needs):
        tensor.requires_grad_(need)
    grad_out = torch.randn(2, 7, 12, dtype=torch.float64)
    _, ours = grads_of(ms_deform_attn, args, grad_out)
    _, mmcv = grads_of(MMCV, args, grad_out)
    assert len(ours) == sum(needs)
    for a, b in zip(ours, mmcv):
        torch.testing.assert_close(a, b, **TOL)


def saved_storages(fn, args):
    """The storages autograd keeps for backward in ``fn(*args)``."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return kept


def test_keeps_its_inputs_only_where_mmcv_keeps_every_sample():
    """Deformable DETR's encoder: 4 levels x 4 points, keys = queries."""
    shapes = torch.tensor([[16, 16], [8, 8], [4, 4], [2, 2]])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    args = inputs(bs=1, heads=8, dims=32, queries=keys, points=4,
                  dtype=torch.float32, shapes=shapes)
    ours = saved_storages(ms_deform_attn, args)
    theirs = saved_storages(MMCV, args)
    input_storages = {a.untyped_storage().data_ptr() for a in args}
    assert set(ours) <= input_storages
    out_bytes = keys * 8 * 32 * 4
    # MMCV keeps the stacked samples: levels x points (16) outputs
    assert sum(theirs.values()) > 16 * out_bytes
    assert sum(ours.values()) < 4 * out_bytes


def test_mmcv_module_runs_it_and_msda_fallback_switches(monkeypatch):
    """MultiScaleDeformableAttention off CUDA runs mmpetl's op; inside
    ``msda_fallback('mmcv')`` MMCV's own code, with the same result."""
    from mmpetl.ops import msda_fp32
    msda = MultiScaleDeformableAttention(embed_dims=32, num_heads=4,
                                         num_levels=2, num_points=2,
                                         batch_first=True).eval()
    kwargs = msda_inputs()
    calls = []
    ours_fn = msda_fp32.ms_deform_attn_pytorch
    monkeypatch.setattr(msda_fp32, 'ms_deform_attn_pytorch',
                        lambda *a: calls.append(1) or ours_fn(*a))
    assert 'mmpetl.ops.ms_deform_attn' in msda_backend(torch.device('cpu'))
    ours = msda(**kwargs)
    assert calls == [1]
    with msda_fallback('mmcv'):
        assert 'multi_scale_deformable_attn_pytorch' in msda_backend(
            torch.device('cpu'))
        theirs = msda(**kwargs)
    assert calls == [1]
    assert 'mmpetl.ops.ms_deform_attn' in msda_backend(torch.device('cpu'))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"'mmpetl', 'mmcv'"):
        with msda_fallback('cuda'):
            pass


def test_replay_returns_the_kept_output_with_gradients_to_new_inputs():
    """What a checkpointed layer's recomputation does: the forward's output,
    autograd wired to the recomputed inputs; no sampling."""
    args = inputs()
    record = ReplayRecord(['ms_deform_attn'])
    with record.active():
        first = ms_deform_attn_pytorch(*args)
    assert len(record.outputs) == 1
    again = [a.detach().clone().requires_grad_(a.requires_grad)
             for a in args]
    with record.active():
        replayed = ms_deform_attn_pytorch(*again)
    torch.testing.assert_close(replayed, first, atol=0, rtol=0)
    grad_out = torch.randn_like(first)
    expected = torch.autograd.grad(first, [args[0], args[2], args[3]],
                                   grad_out)
    got = torch.autograd.grad(replayed, [again[0], again[2], again[3]],
                              grad_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # a kept output changed in place is refused, naming the fix
    record.outputs[0][0].add_(1)
    with pytest.raises(RuntimeError, match="leave 'ms_deform_attn' out"):
        with record.active():
            ms_deform_attn_pytorch(*again)
