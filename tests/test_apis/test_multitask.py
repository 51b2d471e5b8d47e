"""One base, many tasks: switching, mixed-task batches, their limits.

The detector (small Deformable DETR with box refinement, adapters, scaled
prefixes and unmerged LoRA) is built once for the module; tasks A (3
classes), B (5) and C (3) are tuner files on one base (tests/test_apis/
common.py).
"""
import copy
import random

import pytest
import torch

from mmpetl.apis import RoutingError, TaskBank, TaskError
from mmpetl.checkpoints import (build_tuned_model, load_tuner_checkpoint,
                                state_dict_of)
from mmpetl.models import PETLModel
from mmpetl.utils import load_checkpoint_file
from tests.conftest import det_batch, small_detr_cfg
from tests.test_apis.common import (CLASSES, CONFIG_CLASSES, NUM_CLASSES,
                                    assert_same_detections, detector, images,
                                    petl_cfg)


@pytest.fixture(scope='module')
def det(files):
    return detector(files, 'ABC')


def _frozen(det, base):
    """(key, live tensor, base tensor) of every tensor no task sets."""
    live = det.model.state_dict()
    return [(k, live[k], base[k]) for k in det.bank.frozen_keys()]


def _same(a, b):
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(a.pred_instances[key], b.pred_instances[key]), key


def test_switching_keeps_the_base_and_predicts_like_the_task_alone(
        det, files):
    """Many switches (heads of 3 and 5 classes) later, every frozen tensor
    is bit-identical to the base file and each task predicts exactly what
    a model built for it alone (build_tuned_model) predicts."""
    base = state_dict_of(load_checkpoint_file(str(files['base'])))
    frozen = _frozen(det, base)
    assert len(frozen) > 100 and not any(
        k.startswith('bbox_head.') for k, _, _ in frozen)
    rng = random.Random(0)
    for _ in range(40):
        task = det.set_task(rng.choice('ABC'))
        head = det.model.bbox_head
        assert head.num_classes == head.cls_out_channels == \
            NUM_CLASSES[task.name]
        assert head.cls_branches[0].weight.shape[0] == task.num_classes
    pictures = images()
    for name in 'CAB':
        det.set_task(name)
        got = det.predict(pictures, batch_size=4)
        assert {s.task for s in got} == {name}
        assert got[0].classes == (CLASSES[name] or CONFIG_CLASSES)
        alone = build_tuned_model(
            petl_cfg(NUM_CLASSES[name]), load_checkpoint_file(
                str(files['base'])),
            load_tuner_checkpoint(str(files['tuners'][name])))
        batch = det.pipeline  # the same preprocessing for the alone model
        from mmengine.dataset import pseudo_collate
        data = alone.data_preprocessor(
            pseudo_collate([batch(p) for p in pictures]), False)
        with torch.no_grad():
            want = alone.predict(data['inputs'], data['data_samples'])
        for a, b in zip(got, want):
            _same(a, b)
            assert len(a.pred_instances.labels) == 10
        assert int(max(s.pred_instances.labels.max() for s in got)) < \
            NUM_CLASSES[name]
    for key, live, stored in _frozen(det, base):
        assert torch.equal(live, stored), key


def test_mixed_batch_predicts_like_each_task_alone(det):
    """One forward for images of tasks A, B, A, C: each image gets its
    task's detections (its classes, its head) as if the batch ran through
    that task alone. Bit-identical on one thread; on several, routed
    branches run on fewer rows and torch splits their reductions
    differently: measured <= 7e-6 in scores and <= 3e-2 px in boxes (2
    threads, 64 px images), while the same model on the same image in a
    batch of 1 instead of 4 moves by up to 1e-5 and 6e-2 px."""
    pictures = images()
    tasks = ['A', 'B', 'A', 'C']
    det.set_task('C')
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    mixed = det.predict(pictures, task=tasks, batch_size=4)
    after = det.model.state_dict()
    for key, value in before.items():  # the routing swaps are undone
        assert torch.equal(after[key], value), key
    assert det.active_task == 'C'
    alone = {n: det.predict(pictures, task=n, batch_size=4) for n in 'ABC'}
    for i, name in enumerate(tasks):
        assert mixed[i].task == name
        assert_same_detections(mixed[i].pred_instances,
                               alone[name][i].pred_instances, 1e-4, 0.1)
        other = 'B' if name != 'B' else 'A'
        assert not torch.allclose(mixed[i].pred_instances.scores,
                                  alone[other][i].pred_instances.scores)
    assert int(mixed[1].pred_instances.labels.max()) >= 3  # B's 5 classes


def test_mixed_batch_is_bit_identical_on_one_thread(det):
    """The claim of mmpetl.apis.tasks: on one thread each image of a mixed
    batch gets exactly (torch.equal) its task's detections from the same
    batch run with that task alone; the tasks' tuners and heads all
    differ, so a mis-routed image would not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pictures = images()
        tasks = ['A', 'B', 'A', 'C']
        mixed = det.predict(pictures, task=tasks, batch_size=4)
        alone = {n: det.predict(pictures, task=n, batch_size=4)
                 for n in 'ABC'}
    finally:
        torch.set_num_threads(threads)
    for i, name in enumerate(tasks):
        _same(mixed[i], alone[name][i])


def test_task_registry_errors(det, files):
    with pytest.raises(TaskError, match=r"unknown task 'D'; known tasks: "
                       r"'A', 'B', 'C'"):
        det.predict(images(1), task='D')
    with pytest.raises(TaskError, match=r"'A' is already registered"):
        det.add_task('A', str(files['tuners']['B']))
    with pytest.raises(TaskError, match=r"predicts 5 classes but 3 class "
                       r"names were given"):
        det.add_task('B2', str(files['tuners']['B']), classes=['a', 'b', 'c'])
    assert det.tasks == ['A', 'B', 'C']
    det.add_task('B2', str(files['tuners']['B']))
    det.set_task('B2')
    det.remove_task('B2')
    assert det.active_task is None and det.tasks == ['A', 'B', 'C']
    with pytest.raises(TaskError, match=r'no task selected and 3 '
                       r'registered \(A, B, C\)'):
        det.predict(images(1))


@pytest.fixture(scope='module')
def detr():
    """A small DETR: torch attention computing in (L, B, d), a fused LoRA,
    joint-form prefixes, serial adapters and U-Tuners."""
    cfg = small_detr_cfg()
    cfg['test_cfg'] = dict(max_per_img=10)
    torch.manual_seed(0)
    model = PETLModel(model=cfg, tuners=[
        dict(type='SerialAdapter', presets=['ffn'], bottleneck=8),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=4,
             form='joint'),
        dict(type='LoRA', presets=['attn'], rank=2),
        dict(type='UTuner', presets=['attn'], bottleneck=4)],
        trainable=['bbox_head']).eval()
    template = model.tuner_state_dict()

    def task(seed):
        gen = torch.Generator().manual_seed(seed)
        return {k: v.detach() + 0.3 * torch.randn(v.shape, generator=gen)
                for k, v in template.items()}

    return model, task


def test_detr_mixed_batch_routes_torch_attention(detr):
    model, task = detr
    bank = TaskBank(model)
    for seed, name in enumerate('PQ'):
        bank.add(name, task(seed))
    inputs, samples = det_batch(3)
    tasks = ['Q', 'P', 'Q']
    mixed = bank.predict(inputs, copy.deepcopy(samples), tasks)
    alone = {n: bank.predict(inputs, copy.deepcopy(samples), [n] * 3)
             for n in 'PQ'}
    for i, name in enumerate(tasks):
        assert_same_detections(mixed[i].pred_instances,
                               alone[name][i].pred_instances, 1e-4, 0.1)
        other = 'P' if name == 'Q' else 'Q'
        assert not torch.allclose(mixed[i].pred_instances.scores,
                                  alone[other][i].pred_instances.scores)


def test_what_cannot_route_or_switch_is_refused(detr):
    model, task = detr
    bank = TaskBank(model)
    bank.add('P', task(0))
    bank.add('Q', task(1))
    inputs, samples = det_batch(2)
    with pytest.raises(TaskError, match=r"another tuner structure.*1 of "
                       r"their tensors missing"):
        bank.add('R', {k: v for k, v in list(task(2).items())[1:]})
    model.merge_for_deploy()
    try:
        with pytest.raises(RoutingError, match=r'LoRA tuners are merged.*'
                           r'unmerge\(\)'):
            bank.predict(inputs, samples, ['P', 'Q'])
        with pytest.raises(RoutingError, match='merged'):
            bank.switch('P')
    finally:
        model.unmerge()
    # a task that also trains a backbone bias (BitFit-like): switches,
    # but a whole-tensor bias cannot differ per sample of one batch
    biased = TaskBank(model)
    extra = {'backbone.conv1.weight': model.backbone.conv1.weight.detach()}
    biased.add('P', dict(task(0), **extra))
    biased.add('Q', dict(task(1), **extra))
    biased.switch('Q')
    with pytest.raises(RoutingError, match=r'outside the tuners and '
                       r'bbox_head.*backbone\.conv1\.weight'):
        biased.predict(inputs, samples, ['P', 'Q'])
    # a detector handing its head an input of unknown batch layout
    original = model.inner.forward_transformer

    def with_extra(*args, **kwargs):
        return dict(original(*args, **kwargs), memory_extra=torch.ones(2))

    model.inner.forward_transformer = with_extra
    try:
        with pytest.raises(RoutingError, match=r"head inputs "
                           r"\['memory_extra'\] whose batch layout"):
            bank.predict(inputs, samples, ['P', 'Q'])
    finally:
        del model.inner.forward_transformer
