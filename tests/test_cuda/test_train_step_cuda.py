"""One ET-Deformable-DETR training step on CUDA in fp32, fp16 and bf16.

The small Deformable DETR of tests/conftest.py with ETTA's tuners as
configs/_base_/tuners/etta.py ships them (parallel FFN adapters b=256,
scaled prefixes l=50 in every attention), heads trainable. The tuners are
moved off their init first: at init the adapters' up-projections and the
prefix values are zero, which leaves the down-projections and prefix keys
without a gradient. Mixed precision goes through ``mmpetl.AmpOptimWrapper``
(what ``tools/train.py --amp`` builds): fp16 with MMEngine's dynamic loss
scaling, bf16 without. Checked: finite losses; every tuner tensor gets a
finite, non-zero gradient on the device; the transformer's Linears ran in
the autocast dtype; the step moves the tuners and leaves every frozen
tensor bit-identical.
"""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.models import PETLModel
from tests.conftest import det_batch, small_deformable_cfg
from tests.test_cuda.common import CUDA_MARKS, DEVICE, DRY_RUN

pytestmark = CUDA_MARKS

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = {'fp32': None, 'fp16': 'float16', 'bf16': 'bfloat16'}


def etta_tuners() -> list:
    cfg = Config.fromfile(str(ROOT / 'configs/_base_/tuners/etta.py'))
    return [dict(t) for t in cfg.tuners]


@pytest.fixture(scope='module')
def moved_state():
    """The model's weights (CPU), every tuner tensor moved off init."""
    torch.manual_seed(0)
    model = PETLModel(model=small_deformable_cfg(), tuners=etta_tuners(),
                      trainable=['bbox_head'])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, tuner in model.tuner_modules():
            for param in tuner.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.state_dict()


def build(state) -> PETLModel:
    model = PETLModel(model=small_deformable_cfg(), tuners=etta_tuners(),
                      trainable=['bbox_head'])
    model.load_state_dict(state)
    return model.to(DEVICE).train()


def optim_wrapper(model, amp):
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
    if amp:
        cfg.update(type='mmpetl.AmpOptimWrapper', dtype=amp)
    return PETLOptimWrapperConstructor(cfg)(model)


@pytest.fixture()
def amp_on_cpu(monkeypatch):
    """Dry run only: MMEngine's AmpOptimWrapper asserts a GPU when built
    and its CPU autocast refuses fp16; here the wrapper is built anyway (its
    loss scaler then disables itself) and autocasts with torch's CPU
    autocast in the wrapper's dtype."""
    if DRY_RUN:
        from mmengine.optim.optimizer import amp_optimizer_wrapper
        from mmengine.runner import amp as mmengine_amp
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                            lambda: True)
        monkeypatch.setattr(
            mmengine_amp, 'autocast',
            lambda dtype=None, **kwargs: torch.autocast('cpu', dtype=dtype))


def first_linear(model) -> nn.Linear:
    return next(m for m in model.inner.encoder.modules()
                if isinstance(m, nn.Linear))


@pytest.mark.parametrize('precision', list(PRECISIONS))
def test_train_step(precision, moved_state, amp_on_cpu):
    amp = PRECISIONS[precision]
    model = build(moved_state)
    optim = optim_wrapper(model, amp)
    scaler = getattr(optim, 'loss_scaler', None)
    if amp == 'bfloat16':
        assert not scaler.is_enabled()  # mmpetl: no loss scaling in bf16
    params = dict(model.named_parameters())
    tuner_ids = model.tuner_parameter_ids()
    tuned = {n for n, p in params.items() if id(p) in tuner_ids}
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert tuned and frozen and not tuned & frozen
    before = {n: p.detach().clone() for n, p in params.items()}
    inputs, samples = det_batch(2)
    data = model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=samples), True)
    assert data['inputs'].device.type == DEVICE
    seen = []
    hook = first_linear(model).register_forward_hook(
        lambda m, i, out: seen.append(out.dtype))
    for attempt in range(5):  # fp16: dynamic scaling may skip a step
        with optim.optim_context(model):
            losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        assert torch.isfinite(loss), log_vars
        assert all(torch.isfinite(torch.as_tensor(v)) for v in
                   log_vars.values()), log_vars
        optim.backward(loss)
        if scaler is not None:
            scaler.unscale_(optim.optimizer)
        grads = {n: params[n].grad for n in tuned}
        if all(g is not None and torch.isfinite(g).all()
               for g in grads.values()):
            break
        assert amp == 'float16' and scaler.is_enabled(), \
            f'non-finite tuner gradients in {precision}'
        optim.step()  # skipped by the scaler, which lowers its scale
        optim.zero_grad()
    else:
        pytest.fail(f'{precision}: no finite gradients in 5 scaled steps')
    hook.remove()
    expected = {'fp32': torch.float32, 'fp16': torch.float16,
                'bf16': torch.bfloat16}[precision]
    assert seen and set(seen) == {expected}
    for name, grad in grads.items():
        assert grad.device.type == DEVICE, name
        assert grad.abs().max() > 0, f'{name}: zero gradient'
    assert all(params[n].grad is None for n in frozen)
    optim.step()
    optim.zero_grad()
    moved = {n for n in tuned if not torch.equal(params[n], before[n])}
    assert moved == tuned, sorted(tuned - moved)[:5]
    for name in frozen:
        assert params[name].device.type == DEVICE
        assert torch.equal(params[name], before[name]), name
