import pytest
import torch.nn as nn

from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.tuners import ParallelAdapter


class Toy(nn.Module):
    """A `backbone` with an adapter inside it, and a head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 2)
        adapter = ParallelAdapter.from_host(self.backbone[0], bottleneck=4)
        adapter.lr_mult = 3.0
        adapter.attach(self.backbone[0])
        for p in self.backbone.parameters():
            p.requires_grad = False
        for p in adapter.parameters():
            p.requires_grad = True


def lrs(optim_wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g['lr'] for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


def test_only_trainable_params_and_tuner_lr_not_caught_by_custom_keys():
    model = Toy()
    ctor = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.1)),
        paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)},
                           tuner_lr_mult=2.0))
    got = lrs(ctor(model), model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == trainable
    for name, lr in got.items():
        if name.startswith('backbone.0.adapter'):
            assert lr == pytest.approx(0.01 * 3.0 * 2.0)  # not 0.1x backbone
        else:
            assert lr == pytest.approx(0.01)


def test_empty_paramwise_cfg_still_excludes_frozen():
    model = Toy()
    ctor = PETLOptimWrapperConstructor(dict(optimizer=dict(type='SGD',
                                                           lr=0.1)))
    params = [p for g in ctor(model).optimizer.param_groups
              for p in g['params']]
    assert params and all(p.requires_grad for p in params)
    assert len(params) == sum(1 for p in model.parameters()
                              if p.requires_grad)


def test_refuses_no_trainable():
    model = Toy()
    for p in model.parameters():
        p.requires_grad = False
    ctor = PETLOptimWrapperConstructor(dict(optimizer=dict(type='SGD',
                                                           lr=0.1)))
    with pytest.raises(ValueError, match='no trainable parameter'):
        ctor(model)


def settings(optim_wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g['lr'], g['weight_decay'])
            for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


def test_tensors_that_share_settings_share_one_group():
    """MMEngine makes one group per tensor; the PETL constructor merges
    tensors with equal settings (the foreach path then takes them at
    once) and every tensor keeps its own lr and decay."""
    model = Toy()
    ctor = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.1)))
    optim = ctor(model)
    groups = optim.optimizer.param_groups
    # head weight + bias (base: MMEngine's rules), adapter matrices,
    # adapter biases (tuner biases: no decay)
    assert len(groups) == 3
    assert sum(len(g['params']) for g in groups) == 6
    got = settings(optim, model)
    assert got['head.weight'] == got['head.bias'] == (0.01, 0.1)
    assert got['backbone.0.adapter.branch.down.weight'] == \
        got['backbone.0.adapter.branch.up.weight'] == (0.03, 0.1)
    assert got['backbone.0.adapter.branch.down.bias'] == (0.03, 0.0)


def test_tuner_decay_by_parameter_kind():
    """Tuner biases, LayerNorm gains, scales and prefix tokens get no weight
    decay by default and follow bias/norm_decay_mult when set; matrices
    decay as usual."""
    from mmpetl.engine.optimizers import tuner_param_kind
    from mmpetl.tuners import ScaledPrefix
    model = Toy()
    extra = ParallelAdapter(8, bottleneck=4, layer_norm=True,
                            learnable_scale=True)
    extra.attach(model.head)
    prefix = ScaledPrefix(8, 2, num_prefix=3)
    model.add_module('attn', nn.Module())
    model.attn.add_module('prefix', prefix)
    kinds = {n: tuner_param_kind(extra, n, p)
             for n, p in extra.named_parameters()}
    assert kinds == {'scale': 'scale', 'branch.norm.weight': 'norm',
                     'branch.norm.bias': 'norm',
                     'branch.down.weight': 'weight',
                     'branch.down.bias': 'bias', 'branch.up.weight': 'weight',
                     'branch.up.bias': 'bias'}
    assert tuner_param_kind(prefix, 'prefix_k', prefix.prefix_k) == 'token'
    default = settings(PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.1)))(model),
        model)
    assert default['head.adapter.branch.up.weight'][1] == 0.1
    for name in ('head.adapter.scale', 'head.adapter.branch.norm.weight',
                 'head.adapter.branch.up.bias', 'attn.prefix.prefix_v',
                 'attn.prefix.scale'):
        assert default[name][1] == 0.0, name
    assert default['head.bias'][1] == 0.1  # a base parameter: MMEngine's
    ctor = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.1)),
        paramwise_cfg=dict(norm_decay_mult=0.5, bias_decay_mult=0.2,
                           tuner_token_decay_mult=1.0))
    got = settings(ctor(model), model)
    assert got['head.adapter.scale'][1] == pytest.approx(0.05)
    assert got['head.adapter.branch.norm.weight'][1] == pytest.approx(0.05)
    assert got['head.adapter.branch.up.bias'][1] == pytest.approx(0.02)
    assert got['attn.prefix.prefix_v'][1] == pytest.approx(0.1)


def test_tuners_on_sampling_offsets_follow_its_lr_mult():
    """MMDetection trains Deformable DETR's sampling offsets at 0.1x; LoRA
    on that Linear follows it (tuner_follow_keys), other tuners do not."""
    from mmpetl.tuners import LoRALinear
    model = nn.Module()
    model.sampling_offsets = nn.Linear(8, 8)
    model.value_proj = nn.Linear(8, 8)
    for host in (model.sampling_offsets, model.value_proj):
        host.requires_grad_(False)
        LoRALinear.from_host(host, rank=2).attach(host)
    cfg = dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1)})
    base = dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.0))
    got = lrs(PETLOptimWrapperConstructor(base, dict(cfg))(model), model)
    assert got['sampling_offsets.lora.lora_A'] == pytest.approx(0.001)
    assert got['value_proj.lora.lora_A'] == pytest.approx(0.01)
    got = lrs(PETLOptimWrapperConstructor(
        base, dict(cfg, tuner_follow_keys=[]))(model), model)
    assert got['sampling_offsets.lora.lora_A'] == pytest.approx(0.01)


def _default_decay(optimizer_cls):
    """What the optimizer itself applies when no decay is given (read from
    an instance, not from the constructor under test)."""
    import torch
    return optimizer_cls([nn.Parameter(torch.zeros(1))]).defaults[
        'weight_decay']


def _etta_on_small_deformable():
    """The demo's tuners (ETTA: FFN adapters + scaled prefixes in every
    attention) and trained heads, on a small Deformable DETR."""
    from mmpetl.models import PETLModel
    from tests.conftest import small_deformable_cfg
    return PETLModel(
        model=small_deformable_cfg(),
        tuners=[dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8,
                     scale=1.0),
                dict(type='ScaledPrefix', presets=['attn'], num_prefix=4,
                     form='parallel', init='scaled')],
        trainable=['bbox_head'])


def _decay_by_name(optim_wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g.get('weight_decay', 'default')
            for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


def test_decay_policy_does_not_depend_on_weight_decay_in_config():
    """AdamW without weight_decay in the config: every tuner bias, norm,
    scale and token gets 0 explicitly in its group (AdamW alone would give
    them its default), tuner matrices and the trained base parameters get
    AdamW's default; with weight_decay given the same rule uses it."""
    import torch
    from mmpetl.tuners import BaseTuner
    model = _etta_on_small_deformable()
    default = _default_decay(torch.optim.AdamW)
    assert default > 0  # else this test compares 0 with 0
    without = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3)),
        paramwise_cfg=dict(tuner_lr_mult=2.0))(model)
    got = _decay_by_name(without, model)
    zero, matrices = [], []
    for tname, tuner in model.tuner_modules():
        for pname, param in tuner.named_parameters():
            # the kind, independently of tuner_param_kind: vectors and
            # scalars (biases, norms, scales) and declared tokens
            leaf = pname.rpartition('.')[2]
            no_decay = param.ndim < 2 or leaf in tuner.token_params
            (zero if no_decay else matrices).append(f'{tname}.{pname}')
    assert zero and matrices
    scales = [n for n in zero if model.get_parameter(n).ndim == 0]
    assert scales, 'the demo tuners have learnable scales'
    for name in zero:
        assert got[name] == 0.0, name
    for name in matrices:
        assert got[name] == pytest.approx(default), name
    heads = [n for n, p in model.named_parameters() if p.requires_grad
             and not isinstance(model.get_submodule(n.rpartition('.')[0]),
                                BaseTuner) and n.startswith('bbox_head')]
    assert heads and all(got[n] == pytest.approx(default) for n in heads)
    # what the optimizer does with it: a step with zero gradients moves
    # only what decays
    before = {n: p.detach().clone() for n, p in model.named_parameters()
              if n in got}
    with torch.no_grad():
        for name in got:
            model.get_parameter(name).add_(0.5)
            before[name] += 0.5
    for name in got:
        model.get_parameter(name).grad = torch.zeros_like(
            model.get_parameter(name))
    without.optimizer.step()
    for name in zero:
        assert torch.equal(model.get_parameter(name), before[name]), name
    for name in matrices[:3]:
        assert not torch.equal(model.get_parameter(name), before[name])

    given = _decay_by_name(PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)))(
            model), model)
    assert all(given[n] == 0.0 for n in zero)
    assert all(given[n] == pytest.approx(0.05) for n in matrices + heads)


def test_no_warning_per_frozen_parameter():
    """Building logs one summary line for the frozen tensors, not MMEngine's
    warning per frozen tensor; other warnings still pass."""
    import logging

    from mmengine.logging import MMLogger
    model = _etta_on_small_deformable()
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert frozen > 100
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        PETLOptimWrapperConstructor(
            dict(optimizer=dict(type='AdamW', lr=1e-3)))(model)
        logger.warning('a later warning')
    finally:
        logger.removeHandler(handler)
    texts = [(r.levelno, r.getMessage()) for r in records]
    assert not [t for level, t in texts if level >= logging.WARNING
                and 'requires_grad' in t]
    assert [t for _, t in texts if f'{frozen} frozen tensors left out' in t]
    assert (logging.WARNING, 'a later warning') in texts
