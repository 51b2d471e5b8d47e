"""mmpetl.AmpOptimWrapper: no loss scaling under bf16, fp16 keeps it.

MMEngine's AmpOptimWrapper asserts a GPU at construction; the scaler logic
tested here does not need one (a disabled GradScaler runs anywhere), so
the assertion is satisfied by patching MMEngine's availability check.
"""
import pytest
import torch
import torch.nn as nn
from mmengine.optim.optimizer import amp_optimizer_wrapper

from mmpetl.engine.optimizers import AmpOptimWrapper


class DynamicScaler:
    """Stands for the GradScaler MMEngine builds (a CUDA one)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture()
def fake_gpu(monkeypatch):
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler', DynamicScaler)


def wrapper(**kwargs):
    model = nn.Linear(4, 1)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, AmpOptimWrapper(optimizer=optim, **kwargs)


def test_bf16_trains_without_loss_scaling(fake_gpu):
    model, optim = wrapper(dtype='bfloat16')
    assert not optim.loss_scaler.is_enabled()
    x = torch.ones(2, 4)
    loss = model(x).sum()
    optim.backward(loss)  # the gradient of the loss itself, not scaled
    torch.testing.assert_close(model.weight.grad, x.sum(0, keepdim=True))
    before = model.weight.detach().clone()
    optim.step()
    torch.testing.assert_close(model.weight, before - 0.1 * model.weight.grad)
    assert optim.state_dict()['loss_scaler'] == {}
    optim.load_state_dict(optim.state_dict())  # resume works


def test_fp16_and_explicit_scales_keep_the_scaler(fake_gpu):
    _, fp16 = wrapper(dtype='float16')
    assert isinstance(fp16.loss_scaler, DynamicScaler)
    _, static = wrapper(dtype='bfloat16', loss_scale=512.0)
    assert isinstance(static.loss_scaler, DynamicScaler)
    assert static.loss_scaler.kwargs == dict(init_scale=512.0)


def test_train_tool_amp_uses_it():
    import argparse
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / 'tools'))
    try:
        import train
    finally:
        sys.path.pop(0)
    args = argparse.Namespace(
        config=str(root / 'configs/et_deformable_detr_coco.py'),
        launcher='none', cfg_options=None, work_dir=None, amp=True,
        amp_dtype='bfloat16', resume=None)
    cfg = train.build_cfg(args)
    assert cfg.optim_wrapper.type == 'mmpetl.AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert 'loss_scale' not in cfg.optim_wrapper
