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
