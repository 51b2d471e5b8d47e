import json
import os.path as osp
import time

import numpy as np
import pytest
from PIL import Image

from mmpetl.demo.synthetic_coco import (SOURCE_CLASSES, TARGET_CLASSES,
                                        _background, load_backgrounds,
                                        load_fashion_mnist,
                                        make_transfer_dataset, render_image)

TINY = dict(source_sizes=(12, 6), target_sizes=(8, 6), verbose=False)


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('petl_demo'))
    start = time.time()
    manifest = make_transfer_dataset(root, seed=0, **TINY)
    return root, manifest, time.time() - start


def _load(root, domain, split):
    with open(osp.join(root, domain, f'{split}.json')) as f:
        return json.load(f)


def test_asset_subset():
    fm = load_fashion_mnist()
    assert fm['train_images'].shape == (3000, 28, 28)
    assert fm['test_images'].shape == (1000, 28, 28)
    assert fm['train_images'].dtype == np.uint8
    assert np.bincount(fm['train_labels']).tolist() == [300] * 10
    assert tuple(fm['classes'][:5]) == SOURCE_CLASSES
    assert tuple(fm['classes'][5:]) == TARGET_CLASSES


def test_generation_is_fast_and_complete(tiny_root):
    root, manifest, seconds = tiny_root
    assert seconds < 30
    assert set(manifest['splits']) == {
        'source/train', 'source/val', 'target/train', 'target/val'
    }
    assert manifest['splits']['source/train']['images'] == 12
    for domain in ('source', 'target'):
        for split in ('train', 'val'):
            coco = _load(root, domain, split)
            for img in coco['images']:
                assert osp.isfile(osp.join(root, 'images', img['file_name']))


def test_deterministic_and_idempotent(tiny_root, tmp_path):
    root, _, _ = tiny_root
    other = str(tmp_path / 'again')
    make_transfer_dataset(other, seed=0, **TINY)
    for domain in ('source', 'target'):
        assert _load(root, domain, 'train') == _load(other, domain, 'train')
    # same parameters: nothing is rewritten
    ann = osp.join(other, 'source', 'train.json')
    mtime = osp.getmtime(ann)
    make_transfer_dataset(other, seed=0, **TINY)
    assert osp.getmtime(ann) == mtime
    # other parameters: regenerated, different
    make_transfer_dataset(other, seed=1, **TINY)
    assert _load(root, 'source', 'train') != _load(other, 'source',
                                                     'train')


def test_annotations_consistent(tiny_root):
    root, _, _ = tiny_root
    for domain, classes in (('source', SOURCE_CLASSES),
                            ('target', TARGET_CLASSES)):
        for split in ('train', 'val'):
            coco = _load(root, domain, split)
            assert [c['name'] for c in coco['categories']] == list(classes)
            cat_ids = {c['id'] for c in coco['categories']}
            images = {img['id']: img for img in coco['images']}
            assert len(images) == len(coco['images'])
            ann_ids = [a['id'] for a in coco['annotations']]
            assert len(set(ann_ids)) == len(ann_ids)
            assert {a['image_id'] for a in coco['annotations']} == set(images)
            for ann in coco['annotations']:
                img = images[ann['image_id']]
                x, y, w, h = ann['bbox']
                assert ann['category_id'] in cat_ids
                assert ann['iscrowd'] == 0 and ann['area'] == w * h
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= img['width'] and y + h <= img['height']
            with Image.open(osp.join(root, 'images',
                                     coco['images'][0]['file_name'])) as im:
                assert im.size == (coco['images'][0]['width'],
                                   coco['images'][0]['height'])


def test_boxes_match_pasted_pixels():
    rng = np.random.default_rng(0)
    photos = load_backgrounds()[:3]
    fm = load_fashion_mnist()
    for domain in ('source', 'target'):
        for _ in range(5):
            state = rng.bit_generator.state
            img, objects = render_image(rng, photos, fm['test_images'],
                                        fm['test_labels'], domain)
            assert 1 <= len(objects) <= 4
            # replay the generator to get the bare background
            replay = np.random.default_rng(0)
            replay.bit_generator.state = state
            h, w = (int(v) for v in replay.integers(160, 193, 2))
            background = np.clip(
                _background(replay, photos, h, w) + 0.5, 0, 255).astype(
                    np.uint8)
            assert img.shape == background.shape == (h, w, 3)
            pasted = np.zeros((h, w), bool)
            boxes = []
            for obj in objects:
                visible = obj['mask'] > 0
                ys, xs = np.nonzero(visible)
                x, y, bw, bh = obj['bbox']
                # the box is the tight box of the visible (pasted) pixels
                assert [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                        ys.max() - ys.min() + 1] == [x, y, bw, bh]
                boxes.append((x, y, bw, bh))
                pasted |= visible
            # no two boxes overlap, so no garment hides another
            for i, (x1, y1, w1, h1) in enumerate(boxes):
                for x2, y2, w2, h2 in boxes[i + 1:]:
                    assert (x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2
                            or y2 + h2 <= y1)
            # every pixel outside the garments is the background's
            np.testing.assert_array_equal(img[~pasted], background[~pasted])
            assert (img[pasted] != background[pasted]).any(-1).mean() > 0.5


def test_loads_with_mmdet_coco_dataset(tiny_root):
    from mmengine.registry import init_default_scope

    from mmdet.registry import DATASETS
    root, _, _ = tiny_root
    init_default_scope('mmdet')
    for domain, classes in (('source', SOURCE_CLASSES),
                            ('target', TARGET_CLASSES)):
        dataset = DATASETS.build(
            dict(
                type='CocoDataset',
                data_root=root,
                ann_file=f'{domain}/val.json',
                data_prefix=dict(img='images/'),
                metainfo=dict(classes=classes),
                pipeline=[
                    dict(type='LoadImageFromFile'),
                    dict(type='LoadAnnotations', with_bbox=True),
                    dict(type='PackDetInputs')
                ]))
        coco = _load(root, domain, 'val')
        assert len(dataset) == len(coco['images'])
        sample = dataset[0]
        inst = sample['data_samples'].gt_instances
        first = coco['images'][0]['id']
        anns = [a for a in coco['annotations'] if a['image_id'] == first]
        assert len(inst) == len(anns)
        assert inst.labels.tolist() == [a['category_id'] - 1 for a in anns]
        x, y, w, h = anns[0]['bbox']
        assert inst.bboxes.tensor[0].tolist() == [x, y, x + w, y + h]
        assert tuple(sample['inputs'].shape[1:]) == (
            coco['images'][0]['height'], coco['images'][0]['width'])
