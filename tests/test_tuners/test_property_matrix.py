"""The property matrix: one table of cases x one set of generic checks.

A case is a host type (``matrix_hosts.HOSTS``: torch and mmcv
``MultiheadAttention``, mmdet ``ConditionalAttention`` self and cross,
mmcv ``MultiScaleDeformableAttention``, MMPretrain's ViT attention, mmdet
Swin ``ShiftWindowMSA``, mmcv ``FFN``, MMPretrain's ``VisionTransformer``
for VPT) with one tuner or a pair (or all kinds) that share it, injected
by :func:`mmpetl.injection.inject` as a config would. Before every check
each tuner tensor is moved off its init (scales in [0.5, 1], every other
tensor ``N(0, 0.2^2)``: LoRA ``B``, ``P_v``, adapter ``up``, prompts), so
no comparison is 0 against 0. Checks, each a test over all cases:

1. ``merge_for_deploy`` (LoRA folded, prefix MLPs folded) changes no
   output (fp32 tolerance), ``unmerge`` restores them;
2. the mmpetl tuner checkpoint (``.pth`` or ``.safetensors``, every other
   case) loaded into a fresh model (its tuners at other values) gives
   identical outputs;
3. activation-checkpointed gradients equal the plain ones, every compared
   gradient non-zero;
4. a mixed batch routed per task (samples 0, 2 -> task 0, 1 -> task 1,
   3 -> task 2) equals each task's own output on its samples,
   bit-identical (``torch.equal``) on one thread;
5. in bfloat16 without autocast, each host without tuners computes what
   the plain libraries compute in a Python without mmpetl, and with its
   tuners it keeps bfloat16.

A combination mmpetl does not support is a row of ``REFUSED``: building it
raises the named error. The matrix runs on one thread (restored after).
"""
import copy
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpetl.apis import RoutingError, TaskBank
from mmpetl.checkpoints import (load_tuner_checkpoint, load_tuner_state,
                                tuner_checkpoint, write_tuner_checkpoint)
from mmpetl.injection import inject
from mmpetl.models import PETLModel, apply_activation_checkpointing
from mmpetl.tuners import TaskGroups, TunerHostError
from tests.conftest import small_deformable_cfg, tensor_outputs
from tests.test_apis.common import TUNERS as DEFORMABLE_TUNERS
from tests.test_tuners.matrix_hosts import (one_thread, BATCH, HOSTS, Holder,
                                            host_inputs, move_off_init)

ROOT = Path(__file__).resolve().parents[2]

TUNERS = {
    'adapter': dict(type='ParallelAdapter', bottleneck=4,
                    learnable_scale=True),
    'serial_adapter': dict(type='SerialAdapter', bottleneck=4,
                           learnable_scale=True),
    'utuner': dict(type='UTuner', bottleneck=4, learnable_scale=True),
    'utuner_seq': dict(type='UTuner', bottleneck=4, form='sequential',
                       learnable_scale=True),
    'prefix': dict(type='ScaledPrefix', num_prefix=3),
    'prefix_joint': dict(type='ScaledPrefix', num_prefix=3, form='joint'),
    'prefix_mlp': dict(type='ScaledPrefix', num_prefix=3, init='random',
                       reparam_hidden=8),
    'prefix_tuning': dict(type='PrefixTuning', num_prefix=3),
    # deformable attention only: the prefixes steer its sampling
    'prefix_steer': dict(type='ScaledPrefix', num_prefix=3, form='steer'),
    'prefix_steer_parallel': dict(type='ScaledPrefix', num_prefix=3,
                                  form='steer+parallel'),
    'prefix_reweight': dict(type='ScaledPrefix', num_prefix=3,
                            form='reweight'),
    'prefix_reweight_parallel': dict(type='ScaledPrefix', num_prefix=3,
                                     form='reweight+parallel'),
    'lora': dict(type='LoRA', rank=2),
    'vpt_deep': dict(type='VPT', num_prompts=2),
    'vpt_shallow': dict(type='VPT', num_prompts=2, deep=False),
}
#: the attribute each kind takes on its host: two of one group cannot
#: share a host
GROUP = {'adapter': 'adapter', 'serial_adapter': 'serial_adapter',
         'utuner': 'utuner', 'utuner_seq': 'utuner', 'lora': 'lora',
         'prefix': 'prefix', 'prefix_joint': 'prefix',
         'prefix_mlp': 'prefix', 'prefix_tuning': 'prefix',
         'prefix_steer': 'prefix', 'prefix_steer_parallel': 'prefix',
         'prefix_reweight': 'prefix', 'prefix_reweight_parallel': 'prefix',
         'vpt_deep': 'vpt', 'vpt_shallow': 'vpt'}
ATTENTION = ['torch_mha', 'mmcv_mha', 'cond_self', 'cond_cross', 'msda',
             'vit_attn', 'swin']
ATTENTION_TUNERS = ['prefix', 'prefix_joint', 'prefix_mlp', 'prefix_tuning',
                    'prefix_reweight', 'prefix_reweight_parallel',
                    'lora', 'utuner', 'utuner_seq']
STEER_TUNERS = ['prefix_steer', 'prefix_steer_parallel']
ON = dict({h: ATTENTION_TUNERS + STEER_TUNERS for h in ATTENTION},
          ffn=['adapter', 'serial_adapter', 'lora', 'utuner', 'utuner_seq'],
          vit=['vpt_deep', 'vpt_shallow'])
#: (host, kind) mmpetl refuses, with the error and words of its message
REFUSED = {
    ('msda', 'prefix_joint'): (TunerHostError,
                               "form='joint' does not apply"),
    ('msda', 'prefix_mlp'): (TunerHostError, 'reparam_hidden does not apply'),
    ('msda', 'prefix_reweight'): (TunerHostError,
                                  "form='reweight' does not apply"),
    ('msda', 'prefix_reweight_parallel'): (
        TunerHostError, r"form='reweight\+parallel' does not apply"),
    ('torch_mha', 'utuner'): (TunerHostError, 'UTuner cannot tune'),
    ('torch_mha', 'utuner_seq'): (TunerHostError, 'UTuner cannot tune'),
}
# the steer forms move deformable attention's sampling: other attentions
# refuse them by name
STEER_REFUSAL = {
    'prefix_steer': "form='steer' does not apply to ScaledPrefix",
    'prefix_steer_parallel': r"form='steer\+parallel' does not apply to "
                             r'ScaledPrefix'}
REFUSED.update({(h, k): (TunerHostError, STEER_REFUSAL[k])
                for h in ATTENTION if h != 'msda' for k in STEER_TUNERS})
SAME_HOST = (TunerHostError, 'already has an attribute')


def _cases():
    """``(host, kinds)``: every kind alone, every pair of two groups, and
    all groups at once; plus the refused ones (``refusals``)."""
    cases, refusals = [], []
    for host, kinds in ON.items():
        ok = [k for k in kinds if (host, k) not in REFUSED]
        refusals += [(host, (k, )) for k in kinds if (host, k) in REFUSED]
        cases += [(host, (k, )) for k in ok]
        for a, b in itertools.combinations(ok, 2):
            if GROUP[a] != GROUP[b]:
                cases.append((host, (a, b)))
        groups = {}
        for kind in ok:
            groups.setdefault(GROUP[kind], kind)
        if len(groups) > 2:
            cases.append((host, tuple(groups.values())))
        twins = [k for k in ok if GROUP[k] == 'prefix'][:2] or \
            [k for k in ok if GROUP[k] == 'utuner'][:2] or \
            [k for k in ok if GROUP[k] == 'vpt'][:2]
        if len(twins) == 2:
            refusals.append((host, tuple(twins)))
    return cases, refusals


CASES, REFUSALS = _cases()


def case_id(case):
    return f'{case[0]}-{"+".join(case[1])}'


def build(host: str, kinds, seed: int = 3) -> Holder:
    """The host in a holder, the tuners injected (base frozen), every
    tuner tensor moved off its init (``seed``)."""
    spec = HOSTS[host]
    model = Holder(spec.build(), spec.call)
    inject(model, [dict(TUNERS[k], targets=['layer.attn']) for k in kinds],
           arch='detr')
    tuner_ids = {id(p) for _, t in model.tuner_modules()
                 for p in t.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in tuner_ids)
    move_off_init(model, seed)
    return model


def run(model, host: str, **kwargs) -> torch.Tensor:
    return model(host_inputs(host, **kwargs))


# -- refusals -----------------------------------------------------------------
@pytest.mark.parametrize('case', REFUSALS, ids=case_id)
def test_unsupported_combinations_are_refused_by_name(case):
    host, kinds = case
    error, words = REFUSED.get((host, kinds[0]), SAME_HOST) \
        if len(kinds) == 1 else SAME_HOST
    with pytest.raises(error, match=words.replace('(', r'\(')):
        build(host, kinds)


# -- 1. merge -----------------------------------------------------------------
@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_merge_for_deploy_changes_no_output(case):
    host, kinds = case
    model = build(host, kinds).eval()
    with torch.no_grad():
        want = run(model, host)
        report = PETLModel.merge_for_deploy(model)
        merged = run(model, host)
        PETLModel.unmerge(model)
        unmerged = run(model, host)
    names = [n for n, _ in model.tuner_modules()]
    lora = [n for n in names if n.endswith('.lora')]
    assert sorted(report['merged']) == sorted(lora)
    assert sorted(report['merged'] + report['unmerged']) == sorted(names)
    assert ('prefix_mlp' in kinds) == bool(report['folded'])
    tol = dict(rtol=1e-5, atol=1e-5 * float(want.abs().max()))  # fp32
    torch.testing.assert_close(merged, want, **tol)
    torch.testing.assert_close(unmerged, want, **tol)


def test_merge_keeps_deformable_detr_predictions():
    """The case issue 21 measured (0.0235 before the fix): ETTA + LoRA on
    a small Deformable DETR, every tuner tensor off its init; its raw
    outputs do not change when merged."""
    torch.manual_seed(0)
    model = PETLModel(model=small_deformable_cfg(), tuners=copy.deepcopy(
        DEFORMABLE_TUNERS), trainable=['bbox_head'])
    move_off_init(model, 0)
    model.eval()
    with torch.no_grad():
        want = tensor_outputs(model, 'deformable_detr')
        report = model.merge_for_deploy()
        got = tensor_outputs(model, 'deformable_detr')
    assert any(n.endswith('output_proj.lora') for n in report['merged'])
    assert len(want) == len(got) > 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5,
                                   atol=1e-5 * float(b.abs().max()))


# -- 2. save -> load -------------------------------------------------------
@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_tuner_checkpoint_round_trip(case, tmp_path):
    host, kinds = case
    suffix = ('.pth', '.safetensors')[CASES.index(case) % 2]  # both formats
    model = build(host, kinds, seed=3).eval()
    path = str(tmp_path / f'tuners{suffix}')
    write_tuner_checkpoint(tuner_checkpoint(model), path)
    fresh = build(host, kinds, seed=4).eval()
    with torch.no_grad():
        want, other = run(model, host), run(fresh, host)
        assert not torch.allclose(want, other)
        ckpt = load_tuner_checkpoint(path)
        assert sorted(ckpt['state_dict']) == sorted(model.tuner_state_dict())
        assert len(ckpt['state_dict']) >= len(model.tuner_modules())
        load_tuner_state(fresh, ckpt, path)
        assert torch.equal(run(fresh, host), want)


# -- 3. activation checkpointing ---------------------------------------------
def _grads(model, host: str):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # dropout masks (MSDA's 0.1)
    out = run(model, host)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (out * weight).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_checkpointed_gradients_equal_plain_ones(case):
    host, kinds = case
    plain, ckpt = build(host, kinds).train(), build(host, kinds).train()
    assert apply_activation_checkpointing(ckpt, ['layer']) == ['layer']
    want, got = _grads(plain, host), _grads(ckpt, host)
    assert want.keys() == got.keys() and want
    for name, grad in want.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6,
                                   msg=name)


# -- 4. mixed-task batches ------------------------------------------------
OWNER = [0, 1, 0, 2]  # the task of each sample


def _task_tensors(model, seed):
    move_off_init(model, seed)
    return {n: {k: v.clone() for k, v in t.state_dict().items()}
            for n, t in model.tuner_modules()}


def _load(model, tensors):
    for name, tuner in model.tuner_modules():
        tuner.load_state_dict(tensors[name])


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_routed_batch_is_bit_identical_to_each_task_alone(case):
    host, kinds = case
    model = build(host, kinds).eval()
    tuners = model.tuner_modules()
    if not all(t.routable for _, t in tuners):
        bank = TaskBank(model)
        bank.model = type('Detector', (), dict(
            extract_feat=None, forward_transformer=None, bbox_head=None))()
        with pytest.raises(RoutingError, match='cannot compute per sample'):
            bank.check_routable()
        return
    tasks = [_task_tensors(model, 10 + t) for t in range(3)]
    live = _task_tensors(model, 20)  # what the module holds meanwhile
    samples = [torch.tensor([i for i, o in enumerate(OWNER) if o == t])
               for t in range(3)]
    for name, tuner in tuners:
        tuner.routing = TaskGroups(BATCH, [
            (samples[t], tasks[t][name], f'task{t}') for t in range(3)])
    try:
        with torch.no_grad():
            routed = run(model, host)
    finally:
        for _, tuner in tuners:
            tuner.routing = None
    for name, tuner in tuners:  # the swaps are undone
        assert all(torch.equal(v, live[name][k])
                   for k, v in tuner.state_dict().items()), name
    dim = HOSTS[host].out_dim
    for t in range(3):
        _load(model, tasks[t])
        with torch.no_grad():
            alone = run(model, host)
        assert torch.equal(routed.index_select(dim, samples[t]),
                           alone.index_select(dim, samples[t])), t


# -- 5. bfloat16 without autocast --------------------------------------------
@pytest.fixture(scope='module')
def plain_bf16(tmp_path_factory):
    """The hosts' bf16 outputs computed by a Python without mmpetl."""
    out = tmp_path_factory.mktemp('plain') / 'bf16.pt'
    subprocess.run([sys.executable, '-m', 'tests.test_tuners.matrix_hosts',
                    str(out)], cwd=ROOT, check=True, timeout=300)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize('host', list(HOSTS))
def test_bf16_host_computes_as_without_mmpetl(host, plain_bf16):
    """mmpetl changes nothing a bf16 host computes (no tuner, no
    autocast): same dtype, same values (or the same error), whether or not
    earlier tests applied mmpetl's MMCV patches."""
    module = HOSTS[host].build().to(torch.bfloat16)
    module.eval()  # some hosts' train() returns None
    want = plain_bf16[host]
    with torch.no_grad():
        if isinstance(want, str):
            with pytest.raises(Exception) as info:
                HOSTS[host].call(module, host_inputs(host, torch.bfloat16))
            assert type(info.value).__name__ == want.split(':')[0]
            return
        got = HOSTS[host].call(module, host_inputs(host, torch.bfloat16))
    assert got.dtype == want.dtype == torch.bfloat16
    if host == 'msda':  # mmpetl's fallback (once patched) sums in another
        # order: bf16 rounding (measured 1 ulp, 0.016 at values ~3)
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=2e-2)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_bf16_tuned_host_keeps_bf16(case, plain_bf16):
    """With tuners, a bf16 host (no autocast) still computes in bf16
    (where the plain host runs in bf16 at all)."""
    host, kinds = case
    if isinstance(plain_bf16[host], str):
        pytest.skip(f'{host} fails in bf16 without mmpetl too: '
                    f'{plain_bf16[host][:80]}')
    model = build(host, kinds).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = run(model, host, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()


def test_matrix_covers_every_tuner_and_host():
    """Every registered tuner type and every host is in some case."""
    from mmpetl.registry import TUNERS as REGISTRY
    types = {TUNERS[k]['type'] for _, kinds in CASES for k in kinds}
    assert types == set(REGISTRY.module_dict) - {'UniPT'}  # model-wide
    assert {h for h, _ in CASES} == set(HOSTS)
    assert len(CASES) > 100 and REFUSALS
