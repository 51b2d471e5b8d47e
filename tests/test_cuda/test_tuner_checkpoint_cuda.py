"""Tuner checkpoints of a model trained on CUDA: save, load, same outputs.

A small Deformable DETR (box refinement) with parallel adapters, scaled
prefixes and LoRA (tests/test_apis/common.py's tuners) lives on the
device, its tuners and head moved off init as training would. Its tuner
checkpoint (``.pth`` and ``.safetensors``) holds CPU tensors, so a
CPU-only machine loads it; a file written with device tensors is mapped
to the CPU when loaded. Loaded into a fresh model on the device (base
loaded, tuners at init), it gives bit-identical outputs (cuDNN's
algorithm choice fixed: two models of the same weights run the same
kernels), and those differ from the untuned model's.
"""
import pytest
import torch

from mmpetl.checkpoints import (load_tuner_checkpoint, load_tuner_state,
                                save_tuner_checkpoint, tuner_checkpoint,
                                write_tuner_checkpoint)
from mmpetl.models import PETLModel, build_inner_model
from tests.test_apis.common import TUNERS, detector_cfg
from tests.test_cuda.common import (CUDA_MARKS, DEVICE, deterministic_cudnn,
                                    device_batch, flat_tensors)

pytestmark = CUDA_MARKS


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A base checkpoint file of the detector (CPU), and its state."""
    torch.manual_seed(0)
    inner = build_inner_model(detector_cfg(3))
    inner.init_weights()
    path = tmp_path_factory.mktemp('base') / 'base.pth'
    state = inner.state_dict()
    torch.save(dict(state_dict=state), path)
    return path, state


def fresh(state) -> PETLModel:
    """The PETL model on the device, base loaded, tuners at init."""
    model = PETLModel(model=detector_cfg(3), tuners=[dict(t) for t in TUNERS],
                      trainable=['bbox_head'])
    model.load_state_dict(state, strict=False)
    return model.to(DEVICE).eval()


def outputs(model):
    inputs, samples = device_batch(2)
    with torch.no_grad():
        return flat_tensors(model(inputs, samples, mode='tensor'))


@pytest.fixture(scope='module')
def trained(base):
    model = fresh(base[1])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen)
                           .to(param.device))
    return model


@pytest.mark.parametrize('ext', ['pth', 'safetensors'])
def test_round_trip_gives_identical_outputs(ext, base, trained, tmp_path,
                                            monkeypatch):
    deterministic_cudnn(monkeypatch)
    path = str(tmp_path / f'task_tuner.{ext}')
    live = trained.tuner_state_dict()
    assert all(v.device.type == DEVICE for v in live.values())
    save_tuner_checkpoint(trained, path, str(base[0]))
    loaded = load_tuner_checkpoint(path)
    assert set(loaded['state_dict']) == set(live)
    for key, value in loaded['state_dict'].items():
        assert value.device.type == 'cpu', key  # loads without a GPU
        assert torch.equal(value, live[key].detach().cpu()), key
    restored = fresh(base[1])
    untuned = outputs(restored)
    load_tuner_state(restored, loaded, path)
    for key, value in restored.tuner_state_dict().items():
        assert value.device.type == DEVICE, key
    want, got = outputs(trained), outputs(restored)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.device.type == DEVICE
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(untuned, want))


def test_device_tensors_in_a_file_are_mapped_to_the_cpu(base, trained,
                                                        tmp_path):
    """A tuner file whose tensors were pickled on the device (written by
    hand, not by mmpetl) loads with CPU tensors, then applies to a model
    on the device."""
    ckpt = tuner_checkpoint(trained, str(base[0]))
    on_device = {k: v.detach().clone() for k, v in
                 trained.tuner_state_dict().items()}
    ckpt['state_dict'] = on_device
    path = str(tmp_path / 'device_tuner.pth')
    write_tuner_checkpoint(ckpt, path)
    raw = torch.load(path, weights_only=True)  # no map_location
    assert next(iter(raw['state_dict'].values())).device.type == DEVICE
    loaded = load_tuner_checkpoint(path)
    assert all(v.device.type == 'cpu' for v in loaded['state_dict'].values())
    restored = fresh(base[1])
    load_tuner_state(restored, loaded, path)
    for key, value in restored.tuner_state_dict().items():
        assert value.device.type == DEVICE
        assert torch.equal(value, on_device[key]), key
