"""ET-ViT on CIFAR-100 through MMPretrain's CIFAR100 dataset and
ImageClassifier, on tiny generated data in CIFAR-100's on-disk format."""
import pickle
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import mmpetl  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_cifar100(root: Path, num_train=16, num_test=8):
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, num in (('train', num_train), ('test', num_test)):
        labels = [i % 4 for i in range(num)]
        # class-dependent brightness, so there is something to learn
        data = np.stack([
            np.clip(rng.normal(60 * label + 40, 20, 3072), 0, 255)
            for label in labels]).astype(np.uint8)
        with open(folder / split, 'wb') as f:
            pickle.dump({'data': data, 'fine_labels': labels}, f)
    with open(folder / 'meta', 'wb') as f:
        pickle.dump({'fine_label_names': [f'c{i}' for i in range(100)]}, f)


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    from mmpretrain.datasets import CIFAR100
    write_tiny_cifar100(tmp_path / 'cifar100')
    # the real files' md5s are checked; the generated ones differ
    monkeypatch.setattr(CIFAR100, 'train_list', [['train', None]])
    monkeypatch.setattr(CIFAR100, 'test_list', [['test', None]])
    monkeypatch.setattr(CIFAR100, 'meta', dict(CIFAR100.meta, md5=None))
    return tmp_path / 'cifar100'


def test_et_vit_cifar100_trains_and_evaluates(tmp_path, tiny_cifar):
    cfg = Config.fromfile(str(ROOT / 'configs/et-vit-b16_8xb16-200e_cifar100.py'))
    assert cfg.train_dataloader.dataset.type == 'CIFAR100'
    assert cfg.train_dataloader.dataset.download is False  # never downloads
    cfg.merge_from_dict({
        'model.model.backbone.arch': 'deit-tiny',
        'model.model.head.in_channels': 192,
        'train_dataloader.dataset.data_root': str(tiny_cifar),
        'val_dataloader.dataset.data_root': str(tiny_cifar),
        'test_dataloader.dataset.data_root': str(tiny_cifar),
        'train_dataloader.batch_size': 4, 'val_dataloader.batch_size': 8,
        'train_dataloader.num_workers': 0, 'val_dataloader.num_workers': 0,
        'test_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.persistent_workers': False,
        'test_dataloader.persistent_workers': False,
        'train_cfg': dict(_delete_=True, type='IterBasedTrainLoop',
                          max_iters=2, val_interval=2),
        'param_scheduler': [],
        'load_from': None,
        'default_hooks.checkpoint': dict(type='CheckpointHook', interval=2,
                                         by_epoch=False),
        'log_processor.by_epoch': False,
    })
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)

    runner.train()
    metrics = runner.val_loop.run()
    assert 'accuracy/top1' in metrics
    model = runner.model
    names = {n for n, _ in model.tuner_modules()}
    assert 'backbone.layers.11.ffn.adapter' in names
    assert (tmp_path / 'work/iter_2_tuner.pth').exists()


def test_missing_cifar_names_the_folder(tmp_path):
    cfg = Config.fromfile(str(ROOT / 'configs/et-vit-b16_8xb16-200e_cifar100.py'))
    from mmpretrain.datasets import CIFAR100
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        CIFAR100(data_root=str(tmp_path), split='train', download=False,
                 pipeline=cfg.train_pipeline)
