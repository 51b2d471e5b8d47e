"""Optimisation on a fixed batch: what moves, what stays, and the loss falls."""
import pytest
import torch

from mmpetl.engine.hooks import FrozenCheckHook, FrozenParamsChanged
from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.models import PETLModel
from tests.conftest import SMALL_CFGS, batch_for

ETTA = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=32),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=8)]


def setup(arch, lr=1e-3):
    torch.manual_seed(0)
    model = PETLModel(model=SMALL_CFGS[arch](), tuners=ETTA,
                      trainable=['bbox_head'] if arch != 'vit' else ['head'])
    optim = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=lr, weight_decay=1e-4),
             clip_grad=dict(max_norm=1.0)))(model)
    return model.train(), optim


def step(model, optim, batch):
    inputs, samples = batch
    losses = model(inputs, samples, mode='loss')
    loss, _ = model.parse_losses(losses)
    optim.update_params(loss)
    return loss.item()


@pytest.mark.parametrize('arch', ['detr', 'deformable_detr', 'vit'])
def test_only_tuners_and_declared_parts_change(arch):
    model, optim = setup(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    batch = batch_for(arch)
    for _ in range(3):
        step(model, optim, batch)
    changed = {n for n, p in model.named_parameters()
               if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    assert any('.adapter.' in n for n in changed)
    assert any('.prefix.' in n for n in changed)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), name  # bit-identical
    for name, b in model.named_buffers():
        if 'running' in name or 'num_batches' in name:
            assert torch.equal(b, buffers[name]), name  # frozen BN stats


@pytest.mark.parametrize('arch', ['detr', 'deformable_detr'])
def test_overfit_fixed_batch(arch):
    model, optim = setup(arch, lr=2e-3)
    batch = batch_for(arch)
    losses = [step(model, optim, batch) for _ in range(20)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


class _Runner:

    def __init__(self, model):
        import logging
        self.model = model
        self.logger = logging.getLogger('test')


def test_frozen_check_hook_detects_moved_and_unfrozen():
    model, optim = setup('detr')
    hook, runner = FrozenCheckHook(), _Runner(model)
    hook.before_train(runner)
    step(model, optim, batch_for('detr'))
    hook.after_train(runner)  # a normal run passes
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(FrozenParamsChanged,
                       match=r'1 frozen parameters changed.*backbone.conv1'):
        hook.after_train(runner)
    hook.before_train(runner)
    model.encoder.layers[0].ffn.layers[1].weight.requires_grad = True
    with pytest.raises(FrozenParamsChanged, match='1 were un-frozen'):
        hook.after_train(runner)
