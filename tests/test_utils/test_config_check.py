"""check_config: data paths, annotation files, checkpoints and num_classes,
checked before anything is built; valid configs pass."""
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mmengine.config import Config

from mmpetl.utils.config_check import ConfigError, check_config
from tests.bad_inputs import demo_cfg

ROOT = Path(__file__).resolve().parents[2]
DEMO_ET = 'configs/demo/et-deformable-detr_mnv2_demo-target.py'
# every top-level, demo and architecture-base config (the method configs
# only change `tuners` on these bases)
CONFIGS = sorted(
    str(p.relative_to(ROOT)) for pattern in
    ('configs/*.py', 'configs/demo/*.py', 'configs/_base_/archs/*.py')
    for p in ROOT.glob(pattern))


@pytest.fixture(scope='module')
def loaded():
    return {path: Config.fromfile(str(ROOT / path)) for path in CONFIGS}


def test_every_shipped_config_is_consistent(loaded):
    assert len(CONFIGS) >= 10
    for path, cfg in loaded.items():
        for mode in ('train', 'test', None):
            check_config(cfg, mode=mode, check_paths=False)  # no raise


@pytest.mark.parametrize('mode', ['train', 'test'])
def test_demo_configs_pass_with_their_files(tmp_path, mode):
    check_config(demo_cfg(tmp_path), mode=mode)
    ckpt = tmp_path / 'base.pth'
    ckpt.write_bytes(b'')
    check_config(demo_cfg(tmp_path, {'load_from': str(ckpt)}), mode=mode)


def test_repo_demo_data_passes_when_generated():
    if not (ROOT / 'data/petl_demo/manifest.json').exists():
        pytest.skip('demo data not generated here')
    cfg = Config.fromfile(
        str(ROOT / 'configs/demo/deformable-detr_mnv2_demo-source.py'))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's paths are relative to the repo
    try:
        check_config(cfg, mode='train')
        check_config(cfg, mode='test')
    finally:
        os.chdir(cwd)


def test_all_problems_are_listed_with_keys_and_fixes(tmp_path):
    cfg = demo_cfg(tmp_path, {
        'train_dataloader.dataset.ann_file': 'target/trian.json',
        'val_dataloader.dataset.data_prefix.img': 'imgs/',
        'model.model.bbox_head.num_classes': 7})
    with pytest.raises(ConfigError) as info:
        check_config(cfg, mode='train')
    text = str(info.value)
    assert text.startswith('3 problem(s) in the config')
    root = tmp_path / 'petl_demo'
    assert (f'train_dataloader.dataset.ann_file: annotation file '
            f'{root}/target/trian.json does not exist') in text
    assert f'val_dataloader.dataset.data_prefix.img: image folder ' \
        f'{root}/imgs does not exist' in text
    assert 'model.model.bbox_head.num_classes is 7 but ' \
        'train_dataloader.dataset has 5 classes' in text
    assert '`model.model.bbox_head.num_classes=5`' in text
    assert text.count('Fix:') == 3


def test_mode_checks_only_what_the_run_reads(tmp_path):
    cfg = demo_cfg(tmp_path, {
        'test_dataloader.dataset.ann_file': 'target/missing.json',
        'test_evaluator.ann_file': str(tmp_path / 'missing.json')})
    check_config(cfg, mode='train')  # training never reads the test set
    with pytest.raises(ConfigError, match=r'(?s)2 problem.*test_dataloader\.'
                       r'dataset\.ann_file.*test_evaluator\.ann_file'):
        check_config(cfg, mode='test')
    cfg = demo_cfg(tmp_path, {
        'train_dataloader.dataset.data_root': str(tmp_path / 'none')})
    check_config(cfg, mode='test')
    # no validation loop: the val set is not read while training
    cfg = demo_cfg(tmp_path, {
        'val_dataloader.dataset.data_root': str(tmp_path / 'none')})
    with pytest.raises(ConfigError, match='val_dataloader'):
        check_config(cfg, mode='train')
    cfg.val_cfg = None
    check_config(cfg, mode='train')


def test_absolute_ann_file_wins_over_data_root(tmp_path):
    ann = tmp_path / 'elsewhere.json'
    ann.write_text('{}')
    check_config(demo_cfg(tmp_path, {
        'train_dataloader.dataset.ann_file': str(ann)}), mode='train')


def test_remote_paths_are_not_checked(tmp_path, loaded):
    cfg = copy.deepcopy(loaded['configs/et-detr_r50_8xb2-150e_coco.py'])
    with pytest.raises(ConfigError, match=r'(?s)data/coco does not exist.*'
                       r'dataset_prepare'):
        check_config(cfg, mode='train')
    for phase in ('train', 'val', 'test'):
        cfg[f'{phase}_dataloader'].dataset.data_root = 's3://bucket/coco/'
    for phase in ('val', 'test'):
        cfg[f'{phase}_evaluator'].ann_file = 's3://bucket/coco/val.json'
    cfg.load_from = 'https://download.openmmlab.com/x.pth'
    check_config(cfg, mode='train')
    check_config(cfg, mode='test')
    # local-looking paths read through another backend are not checked
    cfg = demo_cfg(tmp_path, {
        'train_dataloader.dataset.data_root': '/cluster/coco/'})
    with pytest.raises(ConfigError, match='/cluster/coco does not exist'):
        check_config(cfg, mode='train')
    cfg.train_dataloader.dataset.backend_args = dict(backend='petrel')
    check_config(cfg, mode='train')


def test_wrapped_datasets(tmp_path):
    cfg = demo_cfg(tmp_path)
    inner = cfg.train_dataloader.dataset.to_dict()
    bad = dict(inner, ann_file='target/other.json')
    cfg.train_dataloader.dataset = dict(
        type='ConcatDataset', datasets=[
            inner, dict(type='RepeatDataset', times=2, dataset=bad)])
    with pytest.raises(ConfigError,
                       match=r'(?s)1 problem.*train_dataloader\.dataset\.'
                       r'datasets\[1\]\.dataset\.ann_file'):
        check_config(cfg, mode='train')
    wrapped = cfg.train_dataloader.dataset.datasets[1].dataset
    wrapped.metainfo = dict(classes=('a', 'b'))
    wrapped.ann_file = inner['ann_file']
    with pytest.raises(ConfigError, match=r'datasets\[1\]\.dataset has 2 '
                       r'classes'):
        check_config(cfg, mode='train')


def test_classification_configs(tmp_path, loaded):
    cfg = copy.deepcopy(loaded['configs/et-vit-b16_8xb16-200e_cifar100.py'])
    with pytest.raises(ConfigError, match=r'(?s)train_dataloader\.dataset\.'
                       r'data_root: folder .*data/cifar100 does not exist '
                       r'\(CIFAR100\).*cifar-100-python'):
        check_config(cfg, mode='train')
    for phase in ('train', 'val', 'test'):
        cfg[f'{phase}_dataloader'].dataset.data_root = str(tmp_path)
    cfg.load_from = None
    check_config(cfg, mode='train')
    cfg.model.model.head.num_classes = 10
    with pytest.raises(ConfigError, match=r"model\.model\.head\.num_classes "
                       r"is 10 but train_dataloader\.dataset has 100 classes"
                       r".*CIFAR100's default"):
        check_config(cfg, mode='train', check_paths=False)


def test_heads_that_are_not_class_counts_are_skipped():
    loader = dict(dataset=dict(type='CocoDataset', data_root=''))
    cfg = dict(model=dict(type='GroundingDINO',
                          bbox_head=dict(num_classes=256)),
               train_dataloader=loader)
    check_config(cfg, mode='train', check_paths=False)
    cfg['model'] = dict(type='FasterRCNN', roi_head=dict(
        bbox_head=dict(num_classes=3)))
    with pytest.raises(ConfigError, match=r'model\.roi_head\.bbox_head\.'
                       r'num_classes is 3 .* 80 classes'):
        check_config(cfg, mode='train', check_paths=False)
    cfg['train_dataloader']['dataset']['type'] = 'NoSuchDataset'
    check_config(cfg, mode='train', check_paths=False)  # Runner's to report


def _tool(args, tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=ROOT)
    return proc, time.time() - start


def test_train_tool_stops_before_building(tmp_path):
    missing = tmp_path / 'petl_demo'
    proc, _ = _tool([
        'tools/train.py', DEMO_ET,
        '--work-dir', tmp_path / 'work', '--cfg-options',
        f'train_dataloader.dataset.data_root={missing}/',
        'model.model.bbox_head.num_classes=6'], tmp_path)
    assert proc.returncode != 0
    err = proc.stderr
    assert 'ConfigError: ' in err and 'found before building the model' in err
    assert f'train_dataloader.dataset.data_root: folder {missing} does ' \
        f'not exist' in err
    assert 'python -m mmpetl.demo.synthetic_coco --out data/petl_demo' in err
    assert 'model.model.bbox_head.num_classes is 6 but ' \
        'train_dataloader.dataset has 5 classes' in err
    # nothing was built or written
    assert 'tuners injected' not in proc.stdout + err
    assert not (tmp_path / 'work').exists()


def test_test_tool_names_a_missing_checkpoint(tmp_path):
    proc, _ = _tool([
        'tools/test.py', DEMO_ET,
        tmp_path / 'iter_200.pth', '--tuner', tmp_path / 'iter_200_tuner.pth',
        '--work-dir', tmp_path / 'work'], tmp_path)
    assert proc.returncode != 0
    assert f'load_from: checkpoint {tmp_path}/iter_200.pth does not exist' \
        in proc.stderr
    assert f'tuner checkpoint {tmp_path}/iter_200_tuner.pth does not ' \
        f'exist' in proc.stderr
    assert 'tuners injected' not in proc.stdout + proc.stderr
