"""A base checkpoint fills every frozen tensor, or loading stops.

``build_tuned_model`` (export, ``MultiTaskDetector``) used to load the base
with ``strict=False`` and drop tensors of other shapes: a frozen tensor
the base did not fill kept its random init, without an error.
"""
import pytest
import torch

from mmpetl.checkpoints import build_tuned_model, tuner_checkpoint
from mmpetl.checkpoints.export import BaseLoadError
from mmpetl.models import build_inner_model
from tests.conftest import small_detr_cfg

TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=4)]


def petl_cfg(num_classes=3):
    return dict(type='mmpetl.PETLModel', model=small_detr_cfg(num_classes),
                tuners=TUNERS, trainable=['bbox_head'])


@pytest.fixture(scope='module')
def base():
    torch.manual_seed(1)
    return {'state_dict': build_inner_model(small_detr_cfg()).state_dict(),
            'meta': {}}


def _edited(base, edit):
    state = dict(base['state_dict'])
    edit(state)
    return {'state_dict': state}


def test_a_fitting_base_fills_every_frozen_tensor(base):
    torch.manual_seed(2)  # another init than the base's
    model = build_tuned_model(petl_cfg(), base)
    own = model.state_dict()
    for key, value in base['state_dict'].items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize('edit,match', [
    (lambda s: s.pop('encoder.layers.1.ffn.layers.1.weight'),
     r'1 frozen tensor\(s\) of the model missing from it: '
     r'encoder\.layers\.1\.ffn\.layers\.1\.weight'),
    (lambda s: s.update({'neck.extra.weight': torch.zeros(2)}),
     r"1 tensor\(s\) the model does not have: neck\.extra\.weight"),
    (lambda s: s.update({'backbone.conv1.weight': torch.zeros(64, 3, 3, 3)}),
     r'1 tensor\(s\) of other shapes: backbone\.conv1\.weight: model '
     r'\(64, 3, 7, 7\) vs file \(64, 3, 3, 3\)'),
], ids=['missing', 'unexpected', 'other-shape'])
def test_a_base_that_does_not_fit_is_refused(base, edit, match):
    with pytest.raises(BaseLoadError, match=match):
        build_tuned_model(petl_cfg(), _edited(base, edit),
                          base_source='base.pth')
    # MultiTaskDetector's mode: only the trained parts may differ
    with pytest.raises(BaseLoadError, match=match):
        build_tuned_model(petl_cfg(), _edited(base, edit),
                          skip_other_shapes=True)


def test_trained_parts_may_differ_frozen_ones_may_not(base):
    """A base of 3 classes under a 5-class config: the heads (trainable,
    replaced by each task) are left out; every frozen tensor loads."""
    torch.manual_seed(3)
    model = build_tuned_model(petl_cfg(5), base, skip_other_shapes=True)
    own = model.state_dict()
    differ = sorted(k for k, v in base['state_dict'].items()
                    if own[k].shape != v.shape)
    assert differ and all(k.startswith('bbox_head.') for k in differ)
    for key, value in base['state_dict'].items():
        if key not in differ:
            assert torch.equal(own[key], value), key
    # without that allowance the heads are named
    with pytest.raises(BaseLoadError, match=r'bbox_head\.fc_cls\.weight: '
                       r'model \(6, 256\) vs file \(4, 256\)'):
        build_tuned_model(petl_cfg(5), base, skip_other_shapes=False)


def test_a_tuner_replaces_the_heads_it_holds(base):
    """With a tuner checkpoint, its tensors may be missing from the base or
    differ in shape; its tensors are what the model holds after."""
    from mmpetl.models import PETLModel
    torch.manual_seed(4)
    trained = PETLModel(model=small_detr_cfg(5), tuners=TUNERS,
                        trainable=['bbox_head'])
    with torch.no_grad():
        for _, tensor in trained.tuner_state_dict().items():
            tensor.normal_()  # off the init
    tuner = tuner_checkpoint(trained)
    model = build_tuned_model(petl_cfg(5), base, tuner)
    own = model.state_dict()
    for key, value in tuner['state_dict'].items():
        assert torch.equal(own[key], value), key
    # a frozen tensor the base lacks is still refused
    with pytest.raises(BaseLoadError, match=r'backbone\.conv1\.weight'):
        build_tuned_model(petl_cfg(5), _edited(
            base, lambda s: s.pop('backbone.conv1.weight')), tuner)


def test_multitask_detector_refuses_a_base_that_does_not_fit(tmp_path,
                                                            base):
    from mmengine.config import Config

    from mmpetl.apis import MultiTaskDetector
    path = tmp_path / 'base.pth'
    torch.save(_edited(base, lambda s: s.pop('decoder.layers.0.norms.0.bias')),
               path)
    cfg = Config(dict(default_scope='mmdet', model=petl_cfg(),
                      test_dataloader=dict(dataset=dict(
                          type='CocoDataset', pipeline=[]))))
    with pytest.raises(BaseLoadError, match=r'(?s)base\.pth does not fit.*'
                       r'decoder\.layers\.0\.norms\.0\.bias'):
        MultiTaskDetector(cfg, str(path))
