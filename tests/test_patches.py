"""mmpetl's patches of MMCV/MMEngine/torch are explicit and keep dtypes.

``import mmpetl`` leaves MMCV, MMEngine and torch as they are (only the
MMPretrain multimodal guard acts at import); :func:`mmpetl.apply_patches`
changes them, logs each change once, and :func:`mmpetl.remove_patches`
puts the libraries' own objects back. MMCV alone is checked in a
subprocess, before mmpetl is imported there.
"""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmpetl
from mmpetl.patches import PATCHES

ROOT = Path(__file__).resolve().parents[1]

# runs MMCV's MultiScaleDeformableAttention (bf16 and fp32, no autocast)
# with MMCV alone, then after `import mmpetl`, after apply_patches(), with
# MMCV's own fallback under the patch, and after remove_patches()
MSDA_SCRIPT = r'''
import json, sys
import torch
torch.set_num_threads(1)
from mmcv.ops import MultiScaleDeformableAttention


def inputs(dtype):
    gen = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[4, 4], [2, 2]])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    return dict(
        query=torch.randn(2, 5, 32, generator=gen).to(dtype),
        value=torch.randn(2, keys, 32, generator=gen).to(dtype),
        reference_points=torch.rand(2, 5, 2, 2, generator=gen).to(dtype),
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 16]))


def run(dtype):
    torch.manual_seed(0)
    msda = MultiScaleDeformableAttention(embed_dims=32, num_heads=4,
                                         num_levels=2, num_points=2,
                                         batch_first=True).eval()
    with torch.no_grad():  # sampling offsets off their zero init
        msda.sampling_offsets.weight.normal_(0, 0.1)
    msda = msda.to(dtype)
    try:
        with torch.no_grad():
            out = msda(**inputs(dtype))
    except Exception as err:
        return dict(error=f'{type(err).__name__}: {err}')
    return dict(dtype=str(out.dtype), out=out.float().flatten().tolist())


results = {}
assert 'mmpetl' not in sys.modules
results['alone'] = {d: run(getattr(torch, d)) for d in ('bfloat16',
                                                        'float32')}
import mmpetl
results['imported'] = {d: run(getattr(torch, d)) for d in ('bfloat16',
                                                           'float32')}
mmpetl.apply_patches()
results['patched'] = {d: run(getattr(torch, d)) for d in ('bfloat16',
                                                          'float32')}
from mmpetl.ops import msda_fallback
with msda_fallback('mmcv'):
    results['patched_mmcv'] = {d: run(getattr(torch, d)) for d in (
        'bfloat16', 'float32')}
mmpetl.remove_patches()
results['removed'] = {d: run(getattr(torch, d)) for d in ('bfloat16',
                                                          'float32')}
print('RESULTS' + json.dumps(results))
'''

# the objects the patches replace, before `import mmpetl`, after it, after
# apply_patches() and after remove_patches(); the log lines
IDENTITY_SCRIPT = r'''
import json, sys
import torch
# torch registers safe globals of its own when these are first imported
# (MMDetection's import does, and the focal_loss_fp32 patch imports it)
import torch._dynamo, torch.distributed.tensor
from mmcv.ops import multi_scale_deform_attn as msda
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import runner


def state():
    get = getattr(torch.serialization, 'get_safe_globals', lambda: [])
    return dict(
        function=id(msda.MultiScaleDeformableAttnFunction),
        fallback=id(msda.multi_scale_deformable_attn_pytorch),
        save=id(runner.save_checkpoint),
        getstate=id(HistoryBuffer.__dict__.get('__getstate__')),
        safe_globals=sorted(map(repr, get())))


result = dict(before=state())
import mmpetl
result['imported'] = state()
result['imported_applied'] = mmpetl.applied_patches()
print('FIRST', mmpetl.apply_patches(), flush=True)
print('SECOND', mmpetl.apply_patches(), flush=True)
result['patched'] = state()
result['patched_applied'] = mmpetl.applied_patches()
result['removed_names'] = mmpetl.remove_patches()
result['removed'] = state()
result['removed_applied'] = mmpetl.applied_patches()
with mmpetl.patched(['msda_fp32']) as done:
    result['context'] = (done, mmpetl.applied_patches(), state())
result['after_context'] = state()
print('RESULTS' + json.dumps(result))
'''


def _run(script: str):
    # the guard's warning (transformers installed) is not an error here
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULTS')]
    return json.loads(line[-1][len('RESULTS'):]), proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def msda_runs():
    return _run(MSDA_SCRIPT)[0]


def test_import_leaves_bf16_msda_as_mmcv_alone(msda_runs):
    """What issue 21 measured: bf16 MSDA without autocast failed after
    ``import mmpetl`` (the wrapper returned fp32 into a bf16 Linear)."""
    alone = msda_runs['alone']
    assert 'error' not in alone['bfloat16'], alone['bfloat16']
    assert alone['bfloat16']['dtype'] == 'torch.bfloat16'
    for mode in ('imported', 'removed', 'patched_mmcv'):
        # the same code runs: bit for bit
        assert msda_runs[mode] == alone, mode


def test_patched_msda_keeps_the_callers_dtype(msda_runs):
    """Patched, MSDA off CUDA runs mmpetl's fallback: the same function in
    the caller's dtype (bf16 stays bf16, no autocast: no fp32 forced)."""
    alone, patched = msda_runs['alone'], msda_runs['patched']
    for dtype, tol in (('float32', 1e-5), ('bfloat16', 2e-2)):
        assert 'error' not in patched[dtype], patched[dtype]
        assert patched[dtype]['dtype'] == alone[dtype]['dtype']
        got = torch.tensor(patched[dtype]['out'])
        want = torch.tensor(alone[dtype]['out'])
        assert want.abs().max() > 0.1  # not a comparison of zeros
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_import_changes_nothing_and_remove_restores_the_originals():
    result, log = _run(IDENTITY_SCRIPT)
    before = result['before']
    assert result['imported'] == before
    # only the import-time guard may be in effect after `import mmpetl`
    assert set(result['imported_applied']) <= {'mmpretrain_multimodal_guard'}
    patched = result['patched']
    for key in ('function', 'fallback', 'save', 'getstate'):
        assert patched[key] != before[key], key
    runtime = set(PATCHES) - {'mmpretrain_multimodal_guard'}
    assert runtime <= set(result['patched_applied'])
    assert runtime <= set(result['removed_names'])
    # MMCV's, MMEngine's and torch's own objects are back
    assert result['removed'] == before
    assert set(result['removed_applied']) <= {'mmpretrain_multimodal_guard'}
    done, applied, inside = result['context']
    assert done == ['msda_fp32'] and 'msda_fp32' in applied
    assert inside['function'] != before['function']
    assert inside['save'] == before['save']
    assert result['after_context'] == before
    # each applied patch is logged once; the second call applies nothing
    first = [x for x in log.splitlines() if x.startswith('FIRST')][0]
    assert all(name in first for name in runtime)
    assert [x for x in log.splitlines() if x.startswith('SECOND')] == [
        'SECOND []']
    upto_second = log[:log.index('SECOND')]
    for patch in PATCHES.values():
        if patch.name in runtime:
            line = f'mmpetl: patched {patch.target} for {patch.why}'
            assert upto_second.count(line) == 1, patch.name
    # the block in `patched()` applied (and logged) msda_fp32 once more
    assert log.count(f"patched {PATCHES['msda_fp32'].target}") == 2


def test_every_patch_is_named_documented_and_checkable():
    for name, patch in PATCHES.items():
        assert patch.name == name
        assert patch.target and patch.why
        for fn in (patch.apply, patch.remove, patch.is_applied):
            assert fn.__doc__, (name, fn)
        assert isinstance(patch.is_applied(), bool)
    with pytest.raises(KeyError, match=r"unknown mmpetl patch.*msda_fp32"):
        mmpetl.apply_patches(['msda'])


def test_is_patched_is_the_one_check():
    """is_patched reads each patch's object: it follows remove/apply of
    the patch and agrees with applied_patches; unknown names are refused."""
    from mmpetl.ops import msda_fp32_patched
    assert mmpetl.is_patched('msda_fp32') and msda_fp32_patched()
    mmpetl.remove_patches(['msda_fp32'])
    try:
        assert not mmpetl.is_patched('msda_fp32') and not msda_fp32_patched()
        assert 'msda_fp32' not in mmpetl.applied_patches()
        assert mmpetl.apply_patches(['msda_fp32']) == ['msda_fp32']
    finally:
        mmpetl.apply_patches(['msda_fp32'])
    assert mmpetl.is_patched('msda_fp32')
    assert mmpetl.applied_patches() == [
        n for n in PATCHES if PATCHES[n].is_applied()]
    with pytest.raises(KeyError, match=r"unknown mmpetl patch.*msda_fp32"):
        mmpetl.is_patched('msda')


def _msda(dtype, device):
    from mmcv.ops import MultiScaleDeformableAttention

    from tests.test_tuners.test_deformable_prefix import msda_inputs
    torch.manual_seed(0)
    msda = MultiScaleDeformableAttention(embed_dims=32, num_heads=4,
                                         num_levels=2, num_points=2,
                                         batch_first=True).eval()
    kwargs = {k: v.to(device=device, dtype=dtype)
              if v.is_floating_point() else v.to(device)
              for k, v in msda_inputs().items()}
    return msda.to(device=device, dtype=dtype), kwargs


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
def test_msda_patch_keeps_dtype_and_device(device):
    """Without autocast the module's output has the caller's dtype and
    device, as with MMCV alone (checked unpatched too, on CPU); under bf16
    autocast it runs (MMCV 2.1's CUDA op alone has no bf16 kernel) and
    stays on the device."""
    assert 'msda_fp32' in mmpetl.applied_patches()
    dtypes = [torch.float32, torch.bfloat16] + (
        [torch.float16] if device == 'cuda' else [])

    def outputs():
        found = {}
        for dtype in dtypes:
            msda, kwargs = _msda(dtype, device)
            with torch.no_grad():
                out = msda(**kwargs)
            found[dtype] = (out.dtype, out.device.type)
        return found

    patched = outputs()
    assert patched == {d: (d, device) for d in dtypes}
    msda, kwargs = _msda(torch.float32, device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        assert msda(**kwargs).device.type == device
    if device == 'cuda':  # MMCV's CUDA op alone: no bf16 kernel
        return
    mmpetl.remove_patches(['msda_fp32'])
    try:
        assert outputs() == patched
    finally:
        mmpetl.apply_patches(['msda_fp32'])


def test_fp32_wrapper_returns_the_values_dtype(monkeypatch):
    """Inside autocast the op runs in fp32 and the result comes back in
    the values' dtype (what MMCV's op returns); outside, the op gets the
    tensors as they are."""
    from mmpetl.ops import FP32MSDAFunction
    seen = []

    class Recorder:

        @staticmethod
        def apply(value, shapes, start, loc, weights, step):
            seen.append(value.dtype)
            return value.flatten(2)

    monkeypatch.setattr(FP32MSDAFunction, 'original', Recorder)
    args = (torch.randn(1, 4, 2, 8).bfloat16(), torch.tensor([[2, 2]]),
            torch.tensor([0]), torch.rand(1, 3, 2, 1, 2, 2).bfloat16(),
            torch.rand(1, 3, 2, 1, 2).bfloat16(), 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        inside = FP32MSDAFunction.apply(*args)
    outside = FP32MSDAFunction.apply(*args)
    assert seen == [torch.float32, torch.bfloat16]
    assert inside.dtype == outside.dtype == torch.bfloat16


def test_atomic_save_keeps_dtypes_and_devices(tmp_path):
    from mmengine.runner import runner

    from mmpetl.utils import load_checkpoint_file
    assert 'atomic_checkpoint_save' in mmpetl.applied_patches()
    state = {'a': torch.randn(3).bfloat16(), 'b': torch.arange(4),
             'c': torch.randn(2, dtype=torch.float16)}
    runner.save_checkpoint({'state_dict': state}, str(tmp_path / 'x.pth'))
    loaded = load_checkpoint_file(str(tmp_path / 'x.pth'))['state_dict']
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        assert loaded[key].device == value.device
        assert torch.equal(loaded[key], value)


def test_history_buffer_state_round_trips():
    from mmengine.logging.history_buffer import HistoryBuffer
    assert 'history_buffer_state' in mmpetl.applied_patches()
    buffer = HistoryBuffer()
    for value in (1.5, 2.5, 4.0):
        buffer.update(value)
    copy = pickle.loads(pickle.dumps(buffer))
    assert copy.data[0].dtype == buffer.data[0].dtype
    assert copy.data[0].tolist() == buffer.data[0].tolist()
    assert copy.mean() == buffer.mean() and copy.current() == 4.0
    # the live object keeps its statistics methods (not mutated)
    assert 'mean' in buffer._statistics_methods


def _py_focal(pred, target, weight=None, gamma=2.0, alpha=0.25,
              reduction='mean', avg_factor=None):
    """A stand-in for MMDetection's ``sigmoid_focal_loss`` (MMCV's op has
    no CPU kernel), same arguments, that records what it was given."""
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    _py_focal.seen.append((pred.dtype, torch.is_autocast_enabled('cpu')))
    one_hot = torch.nn.functional.one_hot(target, pred.size(1) + 1)
    return py_sigmoid_focal_loss(pred, one_hot[:, :-1].to(pred.dtype),
                                 weight, gamma, alpha, reduction, avg_factor)


def test_focal_loss_fp32_runs_half_logits_in_fp32():
    """MMCV's CUDA focal loss has no bf16 kernel (--amp bfloat16 raised on
    an H200): the patched function gets fp32 logits with autocast off, the
    loss in fp32, the gradient back in the logits' dtype; fp32 logits reach
    it as they are."""
    from mmpetl.ops import sigmoid_focal_loss_fp32
    _py_focal.seen = []
    run = sigmoid_focal_loss_fp32(_py_focal)
    assert run.original is _py_focal
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    target = torch.tensor([0, 1, 2, 3, 4, 1])  # 4: background
    weight = torch.rand(6, generator=gen)
    want = _py_focal(logits.double(), target, weight.double(), 2.0, 0.25,
                     'sum')
    for dtype in (torch.bfloat16, torch.float16):
        _py_focal.seen = []
        half = logits.to(dtype).requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = run(half, target, weight.to(dtype), 2.0, 0.25, 'sum')
        assert _py_focal.seen == [(torch.float32, False)], dtype
        assert loss.dtype == torch.float32
        loss.backward()
        assert half.grad.dtype == dtype and half.grad.abs().max() > 0
        # fp32 on the half-precision inputs: only their rounding differs
        ref = _py_focal(half.detach().double(), target,
                        weight.to(dtype).double(), 2.0, 0.25, 'sum')
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
        assert abs(float(ref - want)) < 0.05 * float(want)
    _py_focal.seen = []
    run(logits.clone(), target, None, 2.0, 0.25, 'none')
    assert _py_focal.seen == [(torch.float32, False)]


def test_focal_loss_fp32_patch_wraps_mmdets_function_and_is_undone():
    from mmdet.models.losses import focal_loss

    from mmpetl.ops import focal_loss_fp32_patched
    mmpetl.apply_patches(['focal_loss_fp32'])
    try:
        original = focal_loss.sigmoid_focal_loss.original
        assert focal_loss_fp32_patched() and callable(original)
        assert original.__module__ == 'mmdet.models.losses.focal_loss'
        assert mmpetl.remove_patches(['focal_loss_fp32']) == [
            'focal_loss_fp32']
        assert focal_loss.sigmoid_focal_loss is original
        assert not focal_loss_fp32_patched()
    finally:
        mmpetl.apply_patches(['focal_loss_fp32'])
    assert focal_loss.sigmoid_focal_loss.original is original
