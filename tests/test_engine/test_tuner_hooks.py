"""TunerInitHook (init='activations' in a Runner) and TunerHealthHook."""
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmpetl.tuners import PrefixBase
from tests.conftest import small_deformable_cfg
from tests.test_engine.test_runner import (FixedDetections, base_checkpoint,
                                           read_log)

__all__ = ['base_checkpoint']  # the fixture, shared with test_runner


def runner_with(work_dir, tuners, hooks, max_iters=2, load_from=None,
                resume=False, name='run'):
    loader = DataLoader(FixedDetections(), batch_size=2, shuffle=False,
                        collate_fn=pseudo_collate)
    return Runner(
        model=dict(type='mmpetl.PETLModel', model=small_deformable_cfg(),
                   tuners=tuners, trainable=['bbox_head']),
        work_dir=str(work_dir), train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(constructor='mmpetl.PETLOptimWrapperConstructor',
                           optimizer=dict(type='AdamW', lr=1e-3)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=max_iters,
                                           by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks, load_from=load_from, resume=resume,
        default_scope='mmdet', randomness=dict(seed=0),
        experiment_name=name)


# the joint form on MultiheadAttention, the parallel one on deformable
# attention (its only form)
ACT = [dict(type='ScaledPrefix', presets=['decoder_self_attn'], num_prefix=4,
            init='activations', form='joint'),
       dict(type='ScaledPrefix',
            presets=['encoder_self_attn', 'decoder_cross_attn'],
            num_prefix=4, init='activations')]


def prefixes(model):
    return {n: (t.prefix_k.detach().clone(), t.prefix_v.detach().clone())
            for n, t in model.named_modules() if isinstance(t, PrefixBase)}


class Peek(Hook):
    """Records prefixes and the global RNG state at before_train."""

    def __init__(self, priority, store):
        self.priority, self.store = priority, store

    def before_train(self, runner):
        self.store.update(prefixes=prefixes(runner.model),
                          rng=torch.get_rng_state())


def test_init_hook_sets_prefixes_from_activations_once(tmp_path,
                                                       base_checkpoint):
    """Before step 1 every init='activations' prefix holds tokens of the
    frozen model (joint form: keys and values; parallel: keys, P_v = 0),
    the global RNG is as it was (the training batches are those of a run
    without the init), and a resumed run keeps its trained prefixes."""
    hooks = [dict(type='mmpetl.TunerInitHook', num_batches=1)]
    runner = runner_with(tmp_path, ACT, hooks, load_from=str(base_checkpoint))
    first, after = {}, {}
    runner.register_hook(Peek('VERY_HIGH', first))
    runner.register_hook(Peek('LOW', after))
    runner.train()
    assert '6 prefix tuners initialised from the activations of 1 ' \
        'training batches' in read_log(tmp_path)
    assert torch.equal(first['rng'], after['rng'])
    for name, (key, value) in after['prefixes'].items():
        assert not torch.equal(key, first['prefixes'][name][0]), name
        if 'decoder' in name and 'self_attn' in name:  # joint
            assert value.abs().sum() > 0, name
        else:  # deformable attention, parallel form: exact at init
            assert value.abs().sum() == 0, name
    assert not any(t.needs_data_init for t in runner.model.modules()
                   if isinstance(t, PrefixBase))
    trained = prefixes(runner.model)
    resumed = runner_with(tmp_path, ACT, hooks, max_iters=3, resume=True,
                          name='resumed')
    seen = {}
    resumed.register_hook(Peek('LOW', seen))
    resumed.train()
    for name, (key, value) in trained.items():
        assert torch.equal(seen['prefixes'][name][0], key), name
        assert torch.equal(seen['prefixes'][name][1], value), name


def test_training_without_the_init_hook_is_refused(tmp_path):
    runner = runner_with(tmp_path, ACT, [])
    with pytest.raises(RuntimeError, match="init='activations'.*"
                       'TunerInitHook'):
        runner.train()


def health_runner(tmp_path, tuners, name):
    return runner_with(
        tmp_path / name, tuners,
        [dict(type='mmpetl.TunerHealthHook', interval=2, inert_after=4)],
        max_iters=4, name=name)


def test_health_hook_warns_about_an_inert_branch_and_not_a_live_one(
        tmp_path):
    """mmpetl's first MSDA prefix default (random prefixes, s = 0) is
    built to be inert: its branch adds ~0, and the hook says so, naming
    the host type. The default init learns and draws no warning."""
    inert = [dict(type='ScaledPrefix', presets=['encoder_self_attn'],
                  num_prefix=4, init='random', scale=0.0)]
    runner = health_runner(tmp_path, inert, 'inert')
    runner.train()
    log = read_log(tmp_path / 'inert')
    assert ('DeformablePrefix branch inert in 2 of 2 '
            'MultiScaleDeformableAttention layers') in log
    live = [dict(type='ScaledPrefix', presets=['encoder_self_attn'],
                 num_prefix=4)]
    runner = health_runner(tmp_path, live, 'live')
    runner.train()
    log = read_log(tmp_path / 'live')
    assert 'tuner health at iteration 4: DeformablePrefix (x2): scale' in log
    assert 'inert' not in log
    scalars = [line for line in open(next(
        (tmp_path / 'live').glob('*/vis_data/scalars.json'))).read(
        ).splitlines() if 'tuner/DeformablePrefix/share' in line]
    assert len(scalars) == 3  # iterations 1, 2 and 4
    assert 'tuner_layer/encoder.layers.0.self_attn.prefix/contribution' in \
        scalars[-1]


def test_init_hook_broadcasts_every_prefix_tensor_of_the_form(
        tmp_path, base_checkpoint, monkeypatch):
    """Under DDP rank 0's prefixes are broadcast: every prefix tensor the
    tuner's form has (reweight: P_k and P_q, no P_v), never a missing one."""
    import mmpetl.engine.hooks.tuner_init_hook as hook_module
    sent = []
    monkeypatch.setattr(hook_module, 'get_world_size', lambda: 2)
    monkeypatch.setattr(hook_module, 'broadcast',
                        lambda tensor: sent.append(tensor))
    tuners = [dict(type='ScaledPrefix', presets=['decoder_self_attn'],
                   num_prefix=4, init='activations', form='reweight')]
    runner = runner_with(tmp_path, tuners,
                         [dict(type='mmpetl.TunerInitHook', num_batches=1)],
                         max_iters=1, load_from=str(base_checkpoint))
    runner.train()
    expected = [t for m in runner.model.modules()
                if isinstance(m, PrefixBase)
                for t in (m.prefix_k, m.prefix_q)]
    assert len(expected) == 4  # 2 decoder layers x (P_k, P_q)
    assert sorted(t.data_ptr() for t in sent) == sorted(
        t.data_ptr() for t in expected)


def test_health_summary_reports_the_new_forms_statistics(tmp_path):
    """The steering and re-weighting prefixes' own statistics reach the
    summary line and the scalars (averaged per tuner type), and are
    non-zero once training moved the prefixes."""
    tuners = [dict(type='ScaledPrefix', presets=['encoder_self_attn'],
                   num_prefix=4, form='steer+parallel'),
              dict(type='ScaledPrefix', presets=['decoder_self_attn'],
                   num_prefix=4, form='reweight+parallel')]
    runner = health_runner(tmp_path, tuners, 'forms')
    runner.train()
    log = read_log(tmp_path / 'forms')
    line = [s for s in log.splitlines()
            if 'tuner health at iteration 4' in s][0]
    for key in ('steer_offset_rms', 'steer_weight_tv', 'steer_scale',
                'logit_change', 'scale_v'):
        assert f'{key} ' in line, key
    scalars = [json_line for json_line in open(next(
        (tmp_path / 'forms').glob('*/vis_data/scalars.json'))).read(
        ).splitlines() if 'tuner/DeformablePrefix/steer_weight_tv' in
        json_line]
    import json
    last = json.loads(scalars[-1])
    assert last['tuner/DeformablePrefix/steer_weight_tv'] > 0
    assert last['tuner/ScaledPrefix/logit_change'] > 0
