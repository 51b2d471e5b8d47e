"""Small real-config models, a base and tuner checkpoints of three tasks.

Shared by the API, infer and test-tool tests: a Deformable DETR with box
refinement (ResNet-18, 2+2 layers, 10 queries) whose base is saved once;
tasks A (3 classes), B (5 classes) and C (3 classes, a tuner file from
before class names were recorded) with ETTA-style adapters, scaled
prefixes and LoRA, their tensors moved off init so the tasks differ.
"""
import copy
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from tests.conftest import small_deformable_cfg

TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8),
          dict(type='ScaledPrefix', presets=['attn'], num_prefix=4),
          dict(type='LoRA', presets=['attn'], rank=2)]
CLASSES = {'A': ('cat', 'dog', 'bird'),
           'B': ('one', 'two', 'three', 'four', 'five'),
           'C': None}  # an old tuner file: no class names
NUM_CLASSES = {'A': 3, 'B': 5, 'C': 3}
CONFIG_CLASSES = ('x', 'y', 'z')
PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]


def detector_cfg(num_classes: int = 3) -> dict:
    return small_deformable_cfg(num_classes, with_box_refine=True,
                                test_cfg=dict(max_per_img=10))


def petl_cfg(num_classes: int = 3, tuners=TUNERS) -> dict:
    return dict(type='mmpetl.PETLModel', model=detector_cfg(num_classes),
                tuners=copy.deepcopy(tuners), trainable=['bbox_head'])


def config(num_classes: int = 3, classes=CONFIG_CLASSES,
           tuners=TUNERS) -> Config:
    """A PETL config with a test pipeline, as tools and the API read it,
    and what a training config adds (mmpetl imports, hooks, optimizer
    constructor)."""
    return Config(dict(
        default_scope='mmdet', model=petl_cfg(num_classes, tuners),
        test_dataloader=dict(batch_size=2, dataset=dict(
            type='CocoDataset', metainfo=dict(classes=classes),
            pipeline=PIPELINE)),
        custom_imports=dict(imports=['mmpetl'], allow_failed_imports=False),
        custom_hooks=[dict(type='mmpetl.FrozenCheckHook')],
        optim_wrapper=dict(
            constructor='mmpetl.PETLOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4),
            paramwise_cfg=dict(tuner_lr_mult=2.0))))


def assert_same_detections(a, b, score_tol: float, box_tol: float) -> None:
    """Two detection sets (``bboxes``, ``scores``, ``labels``) equal up to
    rounding: scores in order, and each detection's box and label found
    in the other (near-equal scores may swap places)."""
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=score_tol)
    assert len(a.labels) == len(b.labels)
    for box, label, score in zip(a.bboxes, a.labels, a.scores):
        near = (b.labels == label) & ((b.scores - score).abs() <= score_tol)
        gaps = (b.bboxes[near] - box).abs().amax(-1)
        assert gaps.numel() and gaps.min() <= box_tol, (box, label, score)


def images(count: int = 4, seed: int = 0):
    """BGR uint8 images of a few sizes with bright rectangles."""
    gen = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = (64, 80) if i % 2 else (72, 64)
        img = gen.integers(0, 60, (h, w, 3), dtype=np.uint8)
        y, x = gen.integers(0, h // 2), gen.integers(0, w // 2)
        img[y:y + 20, x:x + 24] = gen.integers(120, 255, 3)
        out.append(img)
    return out


def make_files(tmp: Path) -> dict:
    """base.pth, tuner files of tasks A/B/C, a config file, image files."""
    import mmcv

    from mmpetl.checkpoints import tuner_checkpoint, write_tuner_checkpoint
    from mmpetl.models import PETLModel, build_inner_model
    torch.manual_seed(0)
    inner = build_inner_model(detector_cfg(3))
    inner.init_weights()
    base = tmp / 'base.pth'
    torch.save(dict(state_dict=inner.state_dict()), base)
    model = PETLModel(model=detector_cfg(3), tuners=copy.deepcopy(TUNERS),
                      trainable=['bbox_head'])
    model.load_state_dict(inner.state_dict(), strict=False)
    template = tuner_checkpoint(model, str(base))
    tuners = {}
    for seed, name in enumerate('ABC'):
        gen = torch.Generator().manual_seed(seed + 1)
        state = {}
        for key, value in template['state_dict'].items():
            shape = list(value.shape)
            if '.cls_branches.' in key:  # the task's own classes
                shape[0] = NUM_CLASSES[name]
            state[key] = torch.randn(shape, generator=gen) * 0.3 + (
                value if list(value.shape) == shape else 0)
        meta = dict(template['meta'])
        if CLASSES[name] is not None:
            meta['classes'] = list(CLASSES[name])
        tuners[name] = tmp / f'{name}_tuner.pth'
        write_tuner_checkpoint(dict(state_dict=state, meta=meta),
                               str(tuners[name]))
    cfg_file = tmp / 'config.py'
    config().dump(str(cfg_file))
    image_dir = tmp / 'images'
    image_dir.mkdir()
    paths = []
    for i, img in enumerate(images()):
        paths.append(image_dir / f'img_{i}.png')
        mmcv.imwrite(img, str(paths[-1]))
    return dict(base=base, tuners=tuners, config=cfg_file,
                image_dir=image_dir, images=paths)


def make_lora_task(base: Path, tmp: Path, tuners, classes) -> Path:
    """A tuner file of ``tuners`` with a new head for ``classes``, its
    tensors moved off init (a model built and perturbed)."""
    from mmpetl.checkpoints import save_tuner_checkpoint
    from mmpetl.models import PETLModel
    torch.manual_seed(1)
    model = PETLModel(model=detector_cfg(len(classes)),
                      tuners=copy.deepcopy(tuners), trainable=['bbox_head'])
    own = model.state_dict()
    state = torch.load(base, weights_only=True)['state_dict']
    model.load_state_dict({k: v for k, v in state.items()
                           if own[k].shape == v.shape}, strict=False)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    path = tmp / 'lora_tuner.pth'
    save_tuner_checkpoint(model, str(path), str(base),
                          extra_meta=dict(classes=list(classes)))
    return path


def detector(files: dict, tasks: str):
    """A ``MultiTaskDetector`` on ``config()`` and the base of ``files``,
    with the named tasks (``'ABC'``) registered."""
    from mmpetl.apis import MultiTaskDetector
    det = MultiTaskDetector(config(), str(files['base']))
    for name in tasks:
        det.add_task(name, str(files['tuners'][name]))
    return det
