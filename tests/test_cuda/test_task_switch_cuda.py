"""Task switching on CUDA: one base on the device, tasks swapped in.

tests/test_apis/common.py's base and tuner files of tasks A (3 classes)
and B (5 classes), written on the CPU, are served by one
``MultiTaskDetector`` on the device. After switching back and forth, each
task predicts exactly what a model built for it alone on the device
predicts (cuDNN's algorithm choice fixed: the same weights then run the
same kernels), the two tasks predict differently, and every frozen tensor
is still bit-identical to the base file.
"""
import torch
from mmengine.dataset import pseudo_collate

from mmpetl.apis import MultiTaskDetector
from mmpetl.checkpoints import (build_tuned_model, load_tuner_checkpoint,
                                state_dict_of)
from mmpetl.utils import load_checkpoint_file
from tests.test_apis.common import NUM_CLASSES, config, images, petl_cfg
from tests.test_cuda.common import CUDA_MARKS, DEVICE, deterministic_cudnn

pytestmark = CUDA_MARKS

KEYS = ('bboxes', 'scores', 'labels')


def alone(files, name, det, pictures):
    """Predictions of a model built for task ``name`` only, on DEVICE."""
    model = build_tuned_model(
        petl_cfg(NUM_CLASSES[name]), load_checkpoint_file(
            str(files['base'])),
        load_tuner_checkpoint(str(files['tuners'][name]))).to(DEVICE)
    data = model.data_preprocessor(
        pseudo_collate([det.pipeline(p) for p in pictures]), False)
    with torch.no_grad():
        return model.predict(data['inputs'], data['data_samples'])


def test_switching_predicts_like_each_task_alone(files, monkeypatch):
    deterministic_cudnn(monkeypatch)
    det = MultiTaskDetector(config(), str(files['base']), device=DEVICE)
    for name in 'AB':
        det.add_task(name, str(files['tuners'][name]))
        tensors = det.bank.get(name).tensors
        assert all(t.device.type == DEVICE for t in tensors.values())
    assert all(p.device.type == DEVICE for p in det.model.parameters())
    pictures = images()
    want = {name: alone(files, name, det, pictures) for name in 'AB'}
    got = {}
    for name in 'ABBAB':
        det.set_task(name)
        got[name] = det.predict(pictures, batch_size=4)
        assert det.model.bbox_head.num_classes == NUM_CLASSES[name]
        for a, b in zip(got[name], want[name]):
            for key in KEYS:
                assert a.pred_instances[key].device.type == DEVICE
                assert torch.equal(a.pred_instances[key],
                                   b.pred_instances[key]), (name, key)
    assert not torch.equal(got['A'][0].pred_instances.scores,
                           got['B'][0].pred_instances.scores)
    assert int(max(s.pred_instances.labels.max() for s in got['B'])) >= 3
    base = state_dict_of(load_checkpoint_file(str(files['base'])))
    live = det.model.state_dict()
    frozen = det.bank.frozen_keys()
    assert len(frozen) > 100
    for key in frozen:
        assert torch.equal(live[key].cpu(), base[key]), key
