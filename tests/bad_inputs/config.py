"""Config mistakes found by ``mmpetl.utils.config_check.check_config``
before anything is built."""
import copy

from mmpetl.utils.config_check import ConfigError

from .common import COCO_DETR, Case, demo_cfg, load_cfg


def _check(cfg, mode='train', **kw):
    from mmpetl.utils.config_check import check_config
    check_config(cfg, mode=mode, **kw)


def _config_case(name, bad_input, options, match, mode='train',
                 layout=True):
    return Case(name, 'config', bad_input,
                lambda tmp: _check(demo_cfg(tmp, options, layout), mode),
                ConfigError, match)


def _repeat_dataset(tmp):
    cfg = demo_cfg(tmp)
    inner = cfg.train_dataloader.dataset.to_dict()
    inner['ann_file'] = 'target/train_v2.json'
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=3,
                                        dataset=inner)
    _check(cfg)


def _coco_default_classes(tmp):
    cfg = copy.deepcopy(load_cfg(COCO_DETR))
    cfg.merge_from_dict({'model.model.bbox_head.num_classes': 3})
    _check(cfg, check_paths=False)


CONFIG_CASES = [
    _config_case('data-not-generated',
                 'demo config run before generating the demo data '
                 '(data_root missing)', None,
                 r'train_dataloader\.dataset\.data_root: folder .*petl_demo '
                 r'does not exist.*synthetic_coco --out data/petl_demo',
                 layout=False),
    _config_case('ann-file-typo', 'annotation file name with a typo',
                 {'train_dataloader.dataset.ann_file': 'target/trian.json'},
                 r'train_dataloader\.dataset\.ann_file: annotation file '
                 r'.*target/trian\.json does not exist'),
    _config_case('image-folder-missing', 'image folder (`data_prefix.img`) '
                 'that does not exist',
                 {'val_dataloader.dataset.data_prefix.img': 'imgs/'},
                 r'val_dataloader\.dataset\.data_prefix\.img: image folder '
                 r'.*petl_demo/imgs does not exist'),
    _config_case('evaluator-ann-missing',
                 'evaluator (CocoMetric) `ann_file` that does not exist',
                 {'test_evaluator.ann_file': '/nonexistent/val.json'},
                 r'test_evaluator\.ann_file: annotation file '
                 r'/nonexistent/val\.json does not exist', mode='test'),
    Case('wrapped-dataset', 'config',
         'RepeatDataset wrapping a dataset whose ann_file is missing',
         _repeat_dataset, ConfigError,
         r'train_dataloader\.dataset\.dataset\.ann_file: annotation file '
         r'.*train_v2\.json does not exist'),
    _config_case('num-classes-vs-metainfo',
                 'head `num_classes` (80) differs from the dataset\'s '
                 '`metainfo.classes` (5)',
                 {'model.model.bbox_head.num_classes': 80},
                 r'model\.model\.bbox_head\.num_classes is 80 but '
                 r'train_dataloader\.dataset has 5 classes.*Fix: set '
                 r'`model\.model\.bbox_head\.num_classes=5`'),
    Case('num-classes-vs-default', 'config',
         'head `num_classes=3` on CocoDataset without `metainfo.classes` '
         '(its default: 80 COCO classes)', _coco_default_classes,
         ConfigError,
         r"num_classes is 3 but train_dataloader\.dataset has 80 classes "
         r"\(so do val_dataloader\.dataset\), "
         r"from CocoDataset's default METAINFO\['classes'\]"),
    _config_case('checkpoint-missing',
                 '`tools/test.py CONFIG CHECKPOINT` with a checkpoint path '
                 'that does not exist',
                 {'load_from': '/nonexistent/iter_200.pth'},
                 r'load_from: checkpoint /nonexistent/iter_200\.pth does '
                 r'not exist', mode='test'),
    _config_case('tuner-file-missing',
                 '`tools/test.py ... --tuner` with a path that does not '
                 'exist',
                 {'custom_hooks': [dict(type='mmpetl.LoadTunerHook',
                                        tuner_checkpoint='/nonexistent/'
                                        'iter_200_tuner.pth')]},
                 r'tuner_checkpoint \(--tuner\): tuner checkpoint '
                 r'/nonexistent/iter_200_tuner\.pth does not exist',
                 mode='test'),
]
