"""Tasks and inference: ``tools/infer.py``, ``tools/test.py`` with tasks,
images, mixed-task batches."""
from types import SimpleNamespace

import torch

from mmpetl.apis import ImageReadError, RoutingError, TaskError
from mmpetl.checkpoints import BaseMismatchError
from mmpetl.utils.config_check import ConfigError

from .common import DEMO_ET, Case, demo_cfg, tool


def _infer_args(tmp, *extra):
    infer = tool('infer')
    return infer, infer.parse_args(
        [str(tmp), str(DEMO_ET), '--weights', str(tmp / 'base.pth'),
         '--out-dir', str(tmp / 'out')] + list(extra))


def _infer_unknown_task(tmp):
    infer, args = _infer_args(tmp, '--tuner', f'garments={tmp}/a.pth',
                              '--tuner', f'shoes={tmp}/b.pth', '--task',
                              'shirts')
    infer.check_inputs(args)


def _infer_other_base(tmp):
    from mmpetl.checkpoints import (content_pin, tensor_digests,
                                    write_tuner_checkpoint)
    from mmpetl.checkpoints.format import MARKER
    base = tmp / 'base.pth'
    torch.save(dict(state_dict={'w': torch.zeros(4)}), base)
    pin = content_pin(tensor_digests({'w': torch.ones(4)}))  # another base
    (tmp / 'a.png').write_bytes(b'')
    write_tuner_checkpoint(dict(state_dict={'t': torch.zeros(2)}, meta=dict(
        pin, base_checkpoint='other_base.pth', **{MARKER: 1})),
        str(tmp / 'a_tuner.pth'))
    infer, args = _infer_args(tmp, '--tuner', f'garments={tmp}/a_tuner.pth')
    infer.check_inputs(args)


def _unreadable_image(tmp):
    from mmpetl.apis import read_image
    path = tmp / 'photo_017.jpg'
    path.write_bytes(b'\xff\xd8\xff\xe0' + b'\0' * 60)  # a cut-off JPEG
    read_image(str(path))


def _test_tool_task_classes(tmp):
    """tools/test.py with two tasks; task `boots` comes from a tuner file
    written before class names were recorded, its head has 3 classes, its
    dataset (the demo target) 5."""
    from mmpetl.checkpoints.format import MARKER
    test = tool('test')
    cfg = demo_cfg(tmp)
    cfg.work_dir = str(tmp / 'work')
    torch.save(dict(state_dict={}), tmp / 'base.pth')
    for name, classes in (('garments', 5), ('boots', 3)):
        meta = {MARKER: 1}
        if name == 'garments':
            meta['classes'] = [f'c{i}' for i in range(classes)]
        torch.save(dict(state_dict={
            'bbox_head.cls_branches.0.weight': torch.zeros(classes, 128)},
            meta=meta), tmp / f'{name}_tuner.pth')
    args = SimpleNamespace(
        tuner=[f'garments={tmp}/garments_tuner.pth',
               f'boots={tmp}/boots_tuner.pth'], task_data=[], out=None,
        show_dir=None, checkpoint=str(tmp / 'base.pth'), force_base=False,
        amp=False)
    test.task_configs(args, cfg)


def _two_task_bank(tuners=(), parallel=None):
    """A TaskBank with tasks P and Q on a small DETR (random tensors)."""
    from mmpetl.apis import TaskBank
    from mmpetl.models import PETLModel
    from tests.conftest import small_detr_cfg
    cfg = small_detr_cfg()
    cfg['test_cfg'] = dict(max_per_img=10)
    model = PETLModel(model=cfg, tuners=list(tuners), parallel=parallel,
                      trainable=['bbox_head']).eval()
    bank = TaskBank(model)
    for name in 'PQ':
        bank.add(name, {k: v.detach() + torch.rand(()) for k, v in
                        model.tuner_state_dict().items()})
    return bank


def _mixed_batch(bank):
    from tests.conftest import det_batch
    inputs, samples = det_batch(2)
    bank.predict(inputs, samples, ['P', 'Q'])


def _mixed_merged_lora(tmp):
    bank = _two_task_bank([dict(type='LoRA', presets=['attn'], rank=2)])
    bank.model.merge_for_deploy()
    _mixed_batch(bank)


def _mixed_unipt(tmp):
    _mixed_batch(_two_task_bank(parallel=dict(type='UniPT', bottleneck=8)))


TASK_CASES = [
    Case('task-unknown', 'tasks',
         '`tools/infer.py ... --task shirts` where the tuners name the '
         'tasks `garments` and `shoes`', _infer_unknown_task, TaskError,
         r"unknown task 'shirts'; known tasks: 'garments', 'shoes'"),
    Case('task-other-base', 'tasks',
         '`tools/infer.py` with a tuner trained on another base (same '
         'architecture, other weights)', _infer_other_base,
         BaseMismatchError,
         r'trained on base `other_base\.pth` \(frozen tensors sha256 '
         r'[0-9a-f]{12}\.\.\.\).*base\.pth has frozen tensors sha256 .*'
         r'--force-base'),
    Case('task-classes-vs-head', 'tasks',
         '`tools/test.py` with two tasks; one tuner (written before class '
         'names were recorded) has a 3-class head, its dataset 5 classes',
         _test_tool_task_classes, ConfigError,
         r"task 'boots' \(.*boots_tuner\.pth\): 1 problem.*"
         r'model\.model\.bbox_head\.num_classes is 3 but '
         r'test_dataloader\.dataset has 5 classes'),
    Case('image-unreadable', 'tasks',
         'an image file that cannot be decoded (a cut-off JPEG)',
         _unreadable_image, ImageReadError,
         r'cannot read image .*photo_017\.jpg: the file is empty, '
         r'truncated or not an image \(64 bytes\)'),
    Case('mixed-merged-lora', 'tasks',
         'a mixed-task batch on a model whose LoRA was merged '
         '(`merge_for_deploy`)', _mixed_merged_lora, RoutingError,
         r'12 LoRA tuners are merged into the base weights.*'
         r'model\.unmerge\(\)'),
    Case('mixed-unroutable', 'tasks',
         'a mixed-task batch with UniPT (a network beside the whole model)',
         _mixed_unipt, RoutingError,
         r'UniPT cannot compute per sample of a mixed-task batch.*'
         r'set_task'),
]
