"""Small models built from the real MMDetection / MMPretrain configs.

Only sizes shrink (ResNet-18, 2+2 layers, narrow FFNs, few queries, 64 px
images); module types and names are those of the real configs, so the
presets and tuners meet exactly what users build. ``init_cfg`` entries that
point at torchvision:// weights are nulled: nothing is downloaded.
"""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from mmengine.hub import get_config

import mmpetl  # version checks, transformers guard

# the suite runs as mmpetl's tools do: with its MMCV/MMEngine patches (a
# PETLModel build would apply them anyway, midway through the session);
# tests/test_patches.py checks MMCV without them in subprocesses
mmpetl.apply_patches()

DETR_CFG = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
DEFORMABLE_CFG = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
VIT_CFG = 'mmpretrain::_base_/models/vit-base-p16.py'

_CACHE = {}


def _load(path):
    if path not in _CACHE:
        _CACHE[path] = get_config(path)
    return copy.deepcopy(_CACHE[path])


def small_detr_cfg(num_classes: int = 3) -> dict:
    model = _load(DETR_CFG).model
    model.backbone.update(depth=18, out_indices=(3, ), init_cfg=None)
    model.neck.in_channels = [512]
    model.num_queries = 10
    model.encoder.num_layers = 2
    model.decoder.num_layers = 2
    for layers in (model.encoder, model.decoder):
        layers.layer_cfg.ffn_cfg.feedforward_channels = 128
    model.bbox_head.num_classes = num_classes
    return model.to_dict()


def small_deformable_cfg(num_classes: int = 3, **extra) -> dict:
    model = _load(DEFORMABLE_CFG).model
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.in_channels = [128, 256, 512]
    model.num_queries = 10
    model.encoder.num_layers = 2
    model.decoder.num_layers = 2
    for layers in (model.encoder, model.decoder):
        layers.layer_cfg.ffn_cfg.feedforward_channels = 128
    model.bbox_head.num_classes = num_classes
    model.update(extra)
    return model.to_dict()


def small_vit_cfg(num_classes: int = 5) -> dict:
    model = _load(VIT_CFG).model
    model.backbone.update(
        arch=dict(embed_dims=64, num_layers=2, num_heads=4,
                  feedforward_channels=128),
        img_size=32, patch_size=8, drop_rate=0.0, init_cfg=None)
    model.head.update(in_channels=64, num_classes=num_classes)
    model.head.loss = dict(type='CrossEntropyLoss')
    model.data_preprocessor = dict(type='ClsDataPreprocessor',
                                   num_classes=num_classes)
    return model.to_dict()


def _shrink_backbone(backbone) -> list:
    """Make a DETR-family backbone small in place; its stage widths."""
    if backbone.type == 'ResNet':
        backbone.update(depth=18, init_cfg=None)
        return [64, 128, 256, 512]
    if backbone.type == 'SwinTransformer':
        # Swin-T widths, one block per stage but a shifted-window one in
        # stage 0 (window mask on), 4x4 windows
        backbone.update(embed_dims=96, depths=[2, 1, 1, 1],
                        num_heads=[3, 6, 12, 24], window_size=4,
                        init_cfg=None)
        return [96, 192, 384, 768]
    raise AssertionError(
        f'no shrink rule for backbone {backbone.type!r}: add one to '
        f'tests/conftest.py _shrink_backbone so that this detector is tested')


def small_family_cfg(path, num_classes: int = 3) -> dict:
    """Any DETR-family config (a file path or ``mmdet::...``) shrunk like
    the ones above: ResNet-18 or a one-block-per-stage Swin-T, 1 encoder +
    2 decoder layers, 64-wide FFNs, 10 queries (and 10 denoising queries).
    """
    from mmengine.config import Config
    path = str(path)
    model = _load(path).model if path.startswith('mmdet::') else \
        Config.fromfile(path).model
    widths = _shrink_backbone(model.backbone)
    model.neck.in_channels = [widths[i] for i in model.backbone.out_indices]
    model.num_queries = 10
    model.encoder.num_layers = 1
    model.decoder.num_layers = 2  # DDQ-DETR needs two
    for part in (model.encoder, model.decoder):
        part.layer_cfg.ffn_cfg.feedforward_channels = 64
    model.bbox_head.num_classes = num_classes
    if 'dn_cfg' in model:
        model.dn_cfg.group_cfg.num_dn_queries = 10
    return model.to_dict()


SMALL_CFGS = {
    'detr': small_detr_cfg,
    'deformable_detr': small_deformable_cfg,
    'vit': small_vit_cfg,
}


def det_batch(num_images: int = 2, size: int = 64, seed: int = 0):
    """A fixed detection batch in the model's (post-preprocessor) format."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_images, 3, size, size, generator=gen)
    samples = []
    for i in range(num_images):
        sample = DetDataSample()
        sample.set_metainfo(
            dict(img_shape=(size, size), ori_shape=(size, size),
                 pad_shape=(size, size), batch_input_shape=(size, size),
                 scale_factor=(1.0, 1.0)))
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0],
                              [20.0 + i, 10.0, 60.0, 50.0]])
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.tensor([0, (i + 1) % 3]))
        samples.append(sample)
    return inputs, samples


def cls_batch(num_images: int = 4, size: int = 32, seed: int = 0):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_images, 3, size, size, generator=gen)
    samples = [DataSample().set_gt_label(i % 5) for i in range(num_images)]
    return inputs, samples


def batch_for(arch: str):
    return cls_batch() if arch == 'vit' else det_batch()


def tensor_outputs(model, arch: str):
    """Flat list of the model's raw outputs (mode='tensor') on a batch."""
    inputs, samples = batch_for(arch)
    if arch == 'vit':  # the new head is zero-initialised: compare features
        out = model.extract_feat(inputs)
    else:
        out = model(inputs, samples, mode='tensor')
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for item in out:
        if isinstance(item, torch.Tensor):
            flat.append(item)
        elif isinstance(item, (list, tuple)):
            flat += [t for t in item if isinstance(t, torch.Tensor)]
    return flat


def load_tool(path: str):
    """A script under tools/ as a module (``path`` from the repo root)."""
    full = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(full.stem, full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def files(tmp_path_factory):
    """One base, tuner files of tasks A/B/C, a config file and images
    (tests/test_apis/common.py), for the API, tool and export tests."""
    from tests.test_apis.common import make_files
    return make_files(tmp_path_factory.mktemp('tasks'))
