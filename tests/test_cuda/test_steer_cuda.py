"""ETTA-steer on CUDA: the steering prefixes feed MMCV's CUDA kernel.

The deformable steering form (``mmpetl/tuners/prefix/deformable.py``)
adds its term to the outputs of MSDA's ``sampling_offsets`` and
``attention_weights`` Linears, so on CUDA what it learns reaches MMCV's
kernel, and its gradients come back through the kernel's backward. The
small Deformable DETR of tests/conftest.py carries
``configs/_base_/tuners/etta-steer.py``'s tuners (steer+parallel on the
deformable attentions, reweight+parallel on the decoder self-attention),
every tuner tensor moved off its init (at init the steering term is 0 and
P_k gets no gradient from it: a comparison there would be 0 against 0).

* float64, same weights and images: the outputs and every tuner gradient
  of a fixed linear function of the outputs agree between CUDA (MMCV's
  kernel, which dispatches double) and CPU (mmpetl's op). A function of
  the raw outputs, not the detection loss: a near-tie in the Hungarian
  matching could flip an assignment between the devices. float64, not
  fp32: bilinear sampling's gradient jumps where a sampling point crosses
  a pixel-centre line, and the two ops round the positions differently
  (see test_msda_cuda.py). In fp32 on an H200 (2026-12-04) the outputs
  agreed within 1e-4 and every gradient but one within 1e-3 of its
  tensor's largest entry; the first encoder layer's P_k differed by 1e-5
  (1.2 % of its largest entry), on 27 % of its entries. Tolerances here
  (chosen; this float64 version has not run on a GPU yet): outputs
  ``1e-9``, gradients ``1e-7`` of each tensor's largest entry.
* bf16 autocast (``mmpetl.AmpOptimWrapper``): a training step gives a
  finite, non-zero gradient on every tuner tensor, and the step moves them.
"""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.models import PETLModel
from tests.conftest import det_batch, small_deformable_cfg
from tests.test_cuda.common import (CUDA_MARKS, DEVICE, flat_tensors,
                                    needs_cuda_kernel)

pytestmark = CUDA_MARKS

ROOT = Path(__file__).resolve().parents[2]


def steer_tuners() -> list:
    cfg = Config.fromfile(str(ROOT / 'configs/_base_/tuners/etta-steer.py'))
    tuners = [dict(t) for t in cfg.tuners]
    assert {t.get('form') for t in tuners} >= {'steer+parallel',
                                               'reweight+parallel'}
    return tuners


def build() -> PETLModel:
    torch.manual_seed(0)
    return PETLModel(model=small_deformable_cfg(), tuners=steer_tuners(),
                     trainable=['bbox_head'])


@pytest.fixture(scope='module')
def moved_state():
    """The model's weights (CPU), every tuner tensor moved off init."""
    model = build()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, tuner in model.tuner_modules():
            for param in tuner.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    names = [n for n, _ in model.named_parameters() if 'steer' in n]
    assert any(n.endswith('prefix_steer') for n in names), names
    return model.state_dict()


def outputs_and_grads(state, device):
    """The model's ``mode='tensor'`` outputs and the tuner gradients of
    ``sum_i <w_i, out_i>`` (fixed weights ``w_i``), on ``device``."""
    model = build()
    model.load_state_dict(state)
    # eval: no dropout (it would draw differently on the two devices),
    # and mmdet's Deformable DETR returns tensors in eval mode only
    model = model.to(device=device, dtype=torch.float64).eval()
    inputs, samples = det_batch(2)
    data = model.data_preprocessor(
        dict(inputs=list(inputs.to(device)),
             data_samples=[s.to(device) for s in samples]), False)
    data['inputs'] = data['inputs'].double()
    outs = flat_tensors(model(**data, mode='tensor'))
    gen = torch.Generator().manual_seed(2)
    assert all(o.dtype == torch.float64 for o in outs)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(
        device) for o in outs]
    sum((w * o).sum() for w, o in zip(weights, outs)).backward()
    tuner_ids = model.tuner_parameter_ids()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters()
             if id(p) in tuner_ids}
    return [o.detach().cpu() for o in outs], grads


@needs_cuda_kernel
def test_steer_on_cuda_matches_cpu(moved_state):
    outs_gpu, grads_gpu = outputs_and_grads(moved_state, DEVICE)
    outs_cpu, grads_cpu = outputs_and_grads(moved_state, 'cpu')
    assert len(outs_gpu) == len(outs_cpu) > 0
    for gpu, cpu in zip(outs_gpu, outs_cpu):
        torch.testing.assert_close(gpu, cpu, atol=1e-9, rtol=1e-9)
    assert grads_gpu.keys() == grads_cpu.keys()
    steer = [n for n in grads_cpu if 'steer' in n]
    assert steer, sorted(grads_cpu)[:5]
    for name, cpu in grads_cpu.items():
        scale = cpu.abs().max()
        assert scale > 0, f'{name}: zero gradient on CPU'
        torch.testing.assert_close(grads_gpu[name], cpu,
                                   atol=1e-7 * float(scale), rtol=1e-7,
                                   msg=lambda m: f'{name}: {m}')


def test_steer_bf16_train_step(moved_state):
    model = build()
    model.load_state_dict(moved_state)
    model = model.to(DEVICE).train()
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
    if DEVICE == 'cuda':  # MMEngine's AMP wrapper asserts a GPU
        cfg.update(type='mmpetl.AmpOptimWrapper', dtype='bfloat16')
    optim = PETLOptimWrapperConstructor(cfg)(model)
    tuner_ids = model.tuner_parameter_ids()
    tuned = {n: p for n, p in model.named_parameters() if id(p) in tuner_ids}
    before = {n: p.detach().clone() for n, p in tuned.items()}
    inputs, samples = det_batch(2)
    data = model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=samples), True)
    with optim.optim_context(model):
        losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    optim.backward(loss)
    for name, param in tuned.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), \
            name
        assert param.grad.abs().max() > 0, f'{name}: zero gradient'
    optim.step()
    moved = {n for n, p in tuned.items() if not torch.equal(p, before[n])}
    assert moved == set(tuned), sorted(set(tuned) - moved)[:5]
