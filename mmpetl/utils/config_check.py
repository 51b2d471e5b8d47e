"""Catch config mistakes before the Runner builds anything.

``tools/train.py`` and ``tools/test.py`` call :func:`check_config` right
after loading the config (and ``--cfg-options``): a typo in a path or a
class count then costs seconds, not a model build and a dataset scan.

Two kinds of checks:

* **pure config** (always): the detection/classification head's
  ``num_classes`` against the dataset's classes (``metainfo.classes`` in
  the dataset config, else the dataset type's default ``METAINFO``);
* **files** (``check_paths=True``, what the tools use): every dataset's
  ``data_root``, annotation file (``data_root`` joined with ``ann_file``,
  MMEngine's rule: an absolute ``ann_file`` wins) and image folder
  (``data_prefix.img``), the evaluator's ``ann_file`` (CocoMetric), the
  checkpoint at ``load_from`` and a ``LoadTunerHook``'s tuner checkpoint.

Only what the run uses is checked: ``mode='train'`` looks at the train
dataloader and, when a validation loop is configured, the val dataloader
and evaluator; ``mode='test'`` at the test ones; ``mode=None`` at all
three. Remote paths (``s3://``, ``http://`` ...) and datasets read through
a non-local ``backend_args`` are skipped: the check never blocks a setup
it cannot see. All problems are reported together in one
:class:`ConfigError`.
"""
import importlib
import os.path as osp
from typing import List, Optional, Tuple

from .datasets import dataset_leaves, metainfo_classes

__all__ = ['ConfigError', 'check_config', 'check_num_classes',
           'check_data_paths', 'dataset_classes', 'DEMO_HINT']

DEMO_HINT = ('generate the demo data with `python -m mmpetl.demo.'
             'synthetic_coco --out data/petl_demo`')

# Heads whose num_classes is not a class count (a text-token length).
_OPEN_VOCABULARY = ('GroundingDINO', 'GLIP')


class ConfigError(ValueError):
    """A config that cannot work, with what to change."""


def _get(cfg, key, default=None):
    try:
        return cfg.get(key, default)
    except AttributeError:
        return default


def _is_remote(path: str) -> bool:
    return '://' in str(path)


def _join(root: str, path: str) -> str:
    """MMEngine's BaseDataset rule: an absolute path wins over data_root."""
    if not root or osp.isabs(path) or _is_remote(path):
        return path
    return osp.join(root, path)


def _remote_backend(ds) -> bool:
    for key in ('backend_args', 'file_client_args'):
        args = _get(ds, key)
        if args and (args.get('backend', 'local') not in ('local', 'disk')
                     or args.get('path_mapping')):
            return True
    return False


def _type_name(ds) -> str:
    t = _get(ds, 'type', '')
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def _leaf_datasets(ds, key: str) -> List[Tuple[str, dict]]:
    """(config key, dataset cfg) of the real dataset configs inside
    wrappers (:func:`~mmpetl.utils.datasets.dataset_leaves`)."""
    return [(k, leaf) for k, leaf in dataset_leaves(ds, key)
            if hasattr(leaf, 'get')]


def _phases(cfg, mode: Optional[str]) -> List[str]:
    if mode == 'train':
        phases = ['train']
        if _get(cfg, 'val_cfg') is not None and _get(cfg, 'val_dataloader'):
            phases.append('val')
        return phases
    if mode == 'test':
        return ['test']
    if mode is None:
        return ['train', 'val', 'test']
    raise ValueError(f"mode must be 'train', 'test' or None, got {mode!r}")


def _datasets(cfg, phases) -> List[Tuple[str, dict]]:
    out = []
    for phase in phases:
        loader = _get(cfg, f'{phase}_dataloader')
        if loader and _get(loader, 'dataset') is not None:
            out += _leaf_datasets(loader['dataset'],
                                  f'{phase}_dataloader.dataset')
    return out


def _evaluators(cfg, phases) -> List[Tuple[str, dict]]:
    out = []
    for phase in phases:
        if phase == 'train':
            continue
        ev = _get(cfg, f'{phase}_evaluator')
        if isinstance(ev, (list, tuple)):
            out += [(f'{phase}_evaluator[{i}]', e) for i, e in enumerate(ev)]
        elif ev:
            metrics = _get(ev, 'metrics')
            if metrics is not None and _get(ev, 'type') is None:
                metrics = metrics if isinstance(metrics, (list, tuple)) \
                    else [metrics]
                out += [(f'{phase}_evaluator.metrics[{i}]', m)
                        for i, m in enumerate(metrics)]
            else:
                out.append((f'{phase}_evaluator', ev))
    return out


# ----------------------------------------------------------------- paths
def _data_fix(key: str, ds, field: str, path: str) -> str:
    where = f'--cfg-options {key}.{field}=...'
    if 'petl_demo' in str(path):
        return f'{DEMO_HINT} or set `{where}`'
    if 'CIFAR' in _type_name(ds):
        return (f'put the CIFAR python archive\'s contents (e.g. '
                f'cifar-100-python/) in data_root, or set `{where}`')
    return (f'download/prepare the dataset there (see MMDetection\'s '
            f'docs/en/user_guides/dataset_prepare.md) or set `{where}`')


def check_data_paths(cfg, mode: Optional[str] = None) -> List[str]:
    """Problems with the files a run will read; empty if none."""
    problems = []
    for key, ds in _datasets(cfg, _phases(cfg, mode)):
        if _remote_backend(ds):
            continue
        root = _get(ds, 'data_root') or ''
        if root and not _is_remote(root) and not osp.isdir(root):
            problems.append(
                f'{key}.data_root: folder {osp.abspath(root)} does not '
                f'exist ({_type_name(ds)}). Fix: '
                f'{_data_fix(key, ds, "data_root", root)}.')
            continue
        ann = _get(ds, 'ann_file')
        if ann and isinstance(ann, str):
            path = _join(root, ann)
            if not _is_remote(path) and not osp.isfile(path):
                problems.append(
                    f'{key}.ann_file: annotation file {osp.abspath(path)} '
                    f'does not exist (data_root {root!r} + ann_file '
                    f'{ann!r}). Fix: '
                    f'{_data_fix(key, ds, "ann_file", path)}.')
        prefix = _get(ds, 'data_prefix')
        entries = prefix.items() if hasattr(prefix, 'items') else \
            [('', prefix)] if isinstance(prefix, str) else []
        for name, value in entries:
            if name not in ('', 'img', 'img_path') or not value or \
                    not isinstance(value, str):
                continue
            path = _join(root, value)
            if not _is_remote(path) and not osp.isdir(path):
                field = f'data_prefix.{name}' if name else 'data_prefix'
                problems.append(
                    f'{key}.{field}: image folder {osp.abspath(path)} does '
                    f'not exist (data_root {root!r} + {value!r}). Fix: '
                    f'{_data_fix(key, ds, field, path)}.')
    for key, ev in _evaluators(cfg, _phases(cfg, mode)):
        ann = _get(ev, 'ann_file')
        if not ann or not isinstance(ann, str) or _is_remote(ann) or \
                _remote_backend(ev) or osp.isfile(ann):
            continue
        problems.append(
            f'{key}.ann_file: annotation file {osp.abspath(ann)} does not '
            f'exist ({_type_name(ev)} reads the ground truth from it). Fix: '
            f'{_data_fix(key, ev, "ann_file", ann)}; it is usually the val '
            f'dataset\'s data_root + ann_file.')
    problems += _checkpoint_problems(cfg, mode)
    return problems


def _checkpoint_problems(cfg, mode) -> List[str]:
    problems = []
    load_from = _get(cfg, 'load_from')
    if load_from and isinstance(load_from, str) and \
            not _is_remote(load_from) and not osp.isfile(load_from):
        problems.append(
            f'load_from: checkpoint {osp.abspath(load_from)} does not '
            f'exist. Fix: download or train it there, pass another one '
            + ('(tools/test.py CONFIG CHECKPOINT)' if mode == 'test' else
               '(`--cfg-options load_from=PATH`; `load_from=None` trains '
               'from the init_cfg weights)') + '.')
    for i, hook in enumerate(_get(cfg, 'custom_hooks') or []):
        if str(_get(hook, 'type', '')).split('.')[-1] != 'LoadTunerHook':
            continue
        path = _get(hook, 'tuner_checkpoint')
        if path and not _is_remote(path) and not osp.isfile(path):
            problems.append(
                f'custom_hooks[{i}].tuner_checkpoint (--tuner): tuner '
                f'checkpoint {osp.abspath(path)} does not exist. Fix: give '
                f'a `*_tuner.pth` written beside a training checkpoint.')
    return problems


# ----------------------------------------------------------- num_classes
def _detector(cfg) -> Tuple[str, Optional[dict]]:
    model = _get(cfg, 'model')
    if not model:
        return 'model', None
    if _type_name(model).split('.')[-1] == 'PETLModel':
        return 'model.model', _get(model, 'model')
    return 'model', model


def _heads(key: str, model) -> List[Tuple[str, int]]:
    """(config key, num_classes) of the model's classifying heads."""
    if model is None or _type_name(model).split('.')[-1] in _OPEN_VOCABULARY:
        return []
    found = []

    def add(k, head):
        if not hasattr(head, 'get') or _get(head, 'contrastive_cfg'):
            return
        n = _get(head, 'num_classes')
        if isinstance(n, int) and not isinstance(n, bool):
            found.append((f'{k}.num_classes', n))

    add(f'{key}.bbox_head', _get(model, 'bbox_head'))
    add(f'{key}.head', _get(model, 'head'))  # MMPretrain classifiers
    roi = _get(model, 'roi_head')
    if hasattr(roi, 'get'):
        for name in ('bbox_head', 'mask_head'):
            head = _get(roi, name)
            if isinstance(head, (list, tuple)):  # Cascade R-CNN
                for i, h in enumerate(head):
                    add(f'{key}.roi_head.{name}[{i}]', h)
            else:
                add(f'{key}.roi_head.{name}', head)
    return found


def _default_classes(ds, cfg) -> Optional[tuple]:
    """The dataset type's METAINFO['classes'] from its registry."""
    t = _get(ds, 'type')
    if t is None:
        return None
    try:
        if not isinstance(t, str):
            cls = t
        else:
            scope, _, name = t.rpartition('.')
            scope = scope or _get(ds, '_scope_') or \
                _get(cfg, 'default_scope') or 'mmdet'
            registry = importlib.import_module(f'{scope}.registry').DATASETS
            cls = registry.get(name)
        classes = getattr(cls, 'METAINFO', {}).get('classes')
    except Exception:  # unknown type or scope: the Runner will say so
        return None
    return tuple(classes) if isinstance(classes, (list, tuple)) else None


def _classes_of(ds, cfg) -> Tuple[Optional[tuple], str]:
    """A dataset config's classes and where they come from."""
    if _get(_get(ds, 'metainfo') or {}, 'classes') is not None:
        return metainfo_classes(ds), 'metainfo.classes'
    return _default_classes(ds, cfg), (
        f"{_type_name(ds)}'s default METAINFO['classes']; no "
        f'metainfo.classes is set')


def dataset_classes(cfg, mode: str = 'test') -> Optional[tuple]:
    """The class names of the first dataset ``mode`` uses
    (``metainfo.classes``, else the dataset type's default), or None."""
    for _, ds in _datasets(cfg, _phases(cfg, mode)):
        return _classes_of(ds, cfg)[0]
    return None


def check_num_classes(cfg, mode: Optional[str] = None) -> List[str]:
    """The head's num_classes against each dataset's class count."""
    key, model = _detector(cfg)
    heads = _heads(key, model)
    if not heads:
        return []
    found = {}  # (head, num, classes, where) -> dataset keys
    for ds_key, ds in _datasets(cfg, _phases(cfg, mode)):
        classes, where = _classes_of(ds, cfg)
        if classes is None:
            continue  # a class-list file, or nothing known: skip
        for head_key, num in heads:
            if num != len(classes):
                found.setdefault((head_key, num, tuple(classes), where),
                                 []).append(ds_key)
    problems = []
    for (head_key, num, classes, where), ds_keys in found.items():
        n, ds_key = len(classes), ds_keys[0]
        shown = ', '.join(repr(c) for c in classes[:4]) + \
            (', ...' if n > 4 else '')
        also = f' (so do {", ".join(ds_keys[1:])})' if ds_keys[1:] else ''
        problems.append(
            f'{head_key} is {num} but {ds_key} has {n} classes{also}, from '
            f'{where}: [{shown}]. Fix: set `{head_key}={n}`, or give the '
            f'dataset your {num} class names in '
            f'`{ds_key}.metainfo=dict(classes=(...))`.')
    return problems


def check_config(cfg, mode: Optional[str] = None,
                 check_paths: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem found.

    Args:
        cfg: an MMEngine ``Config`` (or dict) as the Runner would get it.
        mode: ``'train'``, ``'test'``, or None (all dataloaders).
        check_paths: also check that the data, annotation and checkpoint
            files exist (the tools do; config-only tests need not).
    """
    problems = check_num_classes(cfg, mode)
    if check_paths:
        problems += check_data_paths(cfg, mode)
    if problems:
        lines = '\n'.join(f'  - {p}' for p in problems)
        raise ConfigError(
            f'{len(problems)} problem(s) in the config, found before '
            f'building the model:\n{lines}')
