"""mmpetl.models.multitask: the background slot of softmax heads (read from
a built head and from its config alike) and a softmax head's class count
through task switches. Switching and mixed-task batches end to end:
tests/test_apis/test_multitask.py."""
import pytest
import torch

from mmpetl.apis import TaskBank
from mmpetl.models import PETLModel, TaskRouter, background_slots
from tests.conftest import small_deformable_cfg, small_detr_cfg


@pytest.mark.parametrize('make_cfg, slots', [(small_detr_cfg, 1),
                                             (small_deformable_cfg, 0)],
                         ids=['detr-softmax', 'deformable-sigmoid'])
def test_background_slots_of_a_built_head_and_of_its_config_agree(
        make_cfg, slots):
    """DETR's head classifies with a softmax (a background output),
    Deformable DETR's with sigmoids; MMDetection sizes the built head."""
    cfg = make_cfg(num_classes=3)
    model = PETLModel(model=cfg, tuners=[], trainable=['bbox_head'])
    head = model.bbox_head
    assert head.cls_out_channels == 3 + slots  # MMDetection's sizing
    assert background_slots(head) == slots
    assert background_slots(cfg['bbox_head']) == slots
    assert TaskRouter(model).class_offset == slots


def test_a_softmax_heads_tasks_switch_with_their_background_slot():
    """Tasks of 5 and 3 classes on a DETR built with 3: the class count is
    the classifier's rows less the background row, and switching sets
    num_classes and cls_out_channels to it (and back)."""
    model = PETLModel(model=small_detr_cfg(num_classes=3), tuners=[],
                      trainable=['bbox_head']).eval()
    three = {k: v.detach() + 0.5 for k, v in model.tuner_state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    five = dict(three)
    for key in ('bbox_head.fc_cls.weight', 'bbox_head.fc_cls.bias'):
        shape = (6, ) + tuple(three[key].shape[1:])
        five[key] = torch.randn(shape, generator=gen)
    bank = TaskBank(model)
    assert bank.add('five', five).num_classes == 5
    assert bank.add('three', three).num_classes == 3
    head = model.bbox_head
    for name, classes in (('five', 5), ('three', 3), ('five', 5)):
        bank.switch(name)
        assert (head.num_classes, head.cls_out_channels) == (classes,
                                                             classes + 1)
        assert torch.equal(head.fc_cls.weight,
                           bank.get(name).tensors['bbox_head.fc_cls.weight'])
