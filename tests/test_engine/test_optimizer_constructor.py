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
