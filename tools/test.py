"""Evaluate a checkpoint, or a base checkpoint plus tuner checkpoints.

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG BASE.pth --tuner work_dirs/x/iter_500_tuner.pth
    python tools/test.py CONFIG BASE.pth --tuner garments=A_tuner.pth \
        --tuner shoes=B_tuner.pth --task-data garments=data/garments/ \
        --task-data shoes=data/shoes/

With --tuner, CHECKPOINT is the shared base: it is loaded first, then the
tuner tensors, after checking that the tuners were trained on this base
(--force-base applies them to another base of the same architecture).

Takes every flag of MMDetection 3.3's tools/test.py, with its meaning:
--work-dir, --out, --show, --show-dir, --wait-time, --cfg-options,
--launcher, --tta, --local_rank/--local-rank. ``--tta`` wraps the model
in the config's ``tta_model`` and tests with its ``tta_pipeline``; a
detector config without them gets MMDetection's default (horizontal
flip, boxes merged by NMS); any other model without them is refused
(``TTAError``, naming what to add). mmpetl adds --tuner, --task-data,
--force-base and --amp.

Several ``TASK=TUNER`` pairs evaluate each task on its own dataset, one
after the other, each logging MMDetection's metrics (the evaluator's own
lines) under a ``task NAME`` header; a summary line per task (``task NAME:
metric: value ...``) ends the run. ``--task-data TASK=DATA_ROOT`` points
the test dataset of that task at another data root with the config's
layout (its ``ann_file`` and image folder relative to the root; the
evaluator reads DATA_ROOT/ann_file); a task without it uses the config's
data. Each task's head and test dataset take the task's classes (the
tuner checkpoint's ``meta.classes``); every task's config is checked
(paths, head vs dataset classes) before the first one runs. Outputs go
to WORK_DIR/<task>, ``--out X.pkl`` to X_<task>.pkl, ``--show-dir D`` to
D/<task>.
"""
import argparse
import copy
import os
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import mmpetl  # noqa: E402,F401
from tool_utils import (load_config, parse_pairs,  # noqa: E402
                        setup_cpu_distributed)
from mmpetl.utils import dataset_leaves  # noqa: E402
from mmpetl.utils.config_check import ConfigError, check_config  # noqa: E402


class TTAError(ValueError):
    """``--tta`` on a config whose model cannot be tested with TTA."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: MMDetection 3.3 tools/test.py's flags plus
    mmpetl's."""
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint',
                        help='checkpoint (the base with --tuner)')
    parser.add_argument('--tuner', action='append', metavar='[TASK=]TUNER',
                        help='a tuner checkpoint (*_tuner.pth), or '
                        'TASK=TUNER, repeated for several tasks')
    parser.add_argument('--task-data', action='append', default=[],
                        metavar='TASK=DATA_ROOT',
                        help='the data root of a task\'s test dataset')
    parser.add_argument('--force-base', action='store_true',
                        help='apply --tuner to a base other than its own')
    parser.add_argument('--work-dir', help='the dir for evaluation metrics')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show', action='store_true',
                        help='show prediction results in a window')
    parser.add_argument('--show-dir', help='save images with predictions '
                        '(under work_dir/<timestamp>/ when relative)')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='the interval of --show (s)')
    parser.add_argument('--amp', action='store_true', help='test with amp')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s '
                        'tta_model/tta_pipeline; detectors: flip by default)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _type_name(transform) -> str:
    return str(transform.get('type', '')).split('.')[-1]


def use_tta(cfg) -> None:
    """``--tta`` as MMDetection's tools/test.py: the model wrapped in
    ``tta_model``, the test dataset's pipeline replaced by
    ``tta_pipeline``. A config without them gets MMDetection's defaults
    if it tests a detector (its test pipeline ends with
    ``PackDetInputs``): ``DetTTAModel`` (NMS 0.5, 100 boxes) over the
    image and its horizontal flip.

    Raises:
        TTAError: no ``tta_model``/``tta_pipeline`` and not a detector.
    """
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    pipeline = list(dataset.get('pipeline') or [])
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        if not pipeline or _type_name(pipeline[-1]) != 'PackDetInputs':
            last = _type_name(pipeline[-1]) if pipeline else 'nothing'
            absent = ' and no '.join(
                k for k in ('tta_model', 'tta_pipeline') if k not in cfg)
            raise TTAError(
                f'--tta: the config has no {absent} and its test pipeline '
                f'ends with {last}, not '
                f'PackDetInputs, so MMDetection\'s default flip TTA for '
                f'detectors does not apply. Add tta_model (a BaseTTAModel, '
                f'e.g. mmpretrain\'s AverageClsScoreTTA for a classifier) '
                f'and tta_pipeline (ending in TestTimeAug) to the config, '
                f'or drop --tta.')
    if 'tta_model' not in cfg:
        print('note: --tta: no tta_model in the config: MMDetection\'s '
              'DetTTAModel (NMS 0.5, 100 boxes per image)', file=sys.stderr)
        cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(
            nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        print('note: --tta: no tta_pipeline in the config: the test '
              'pipeline over the image and its horizontal flip',
              file=sys.stderr)
        tta = copy.deepcopy(pipeline)
        tta[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.),
             dict(type='RandomFlip', prob=0.)],
            [dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape',
                'scale_factor', 'flip', 'flip_direction'))]])
        cfg.tta_pipeline = tta
    cfg.model = dict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline  # inside dataset wrappers too


def build_cfg(args, cfg=None, tuner=None, out=None, show_dir=None):
    """The test config: CHECKPOINT as ``load_from``, a ``LoadTunerHook``
    for ``tuner``, AMP, ``--show``/``--show-dir`` and ``--out`` as asked
    (``--tta`` comes after :func:`check_config`: :func:`use_tta`)."""
    cfg = load_config(args) if cfg is None else cfg
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if tuner:
        hooks = list(cfg.get('custom_hooks', []))
        hooks.append(dict(type='mmpetl.LoadTunerHook',
                          tuner_checkpoint=tuner,
                          force_base=args.force_base))
        cfg.custom_hooks = hooks
    if args.amp:
        cfg.test_cfg.fp16 = True
    show = getattr(args, 'show', False)  # (a Namespace from code)
    if show_dir or show:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise SystemExit('--show/--show-dir need a `visualization` hook '
                             'in default_hooks (DetVisualizationHook)')
        vis.update(draw=True)
        if show:
            vis.update(show=True, wait_time=args.wait_time)
        if show_dir:
            vis.update(test_out_dir=show_dir)
    if out:
        if not out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must end with .pkl or .pickle')
        cfg.test_evaluator = [cfg.test_evaluator, dict(
            type='DumpDetResults', out_file_path=out)] if not isinstance(
                cfg.test_evaluator, list) else cfg.test_evaluator + [
                    dict(type='DumpDetResults', out_file_path=out)]
    return cfg


def _use_data(cfg, root: str) -> None:
    """Point the test dataset(s) and evaluator(s) at ``root``."""
    leaves = [d for _, d in dataset_leaves(cfg.test_dataloader.dataset)]
    for dataset in leaves:
        dataset.data_root = root
    ann = leaves[0].get('ann_file')
    evaluators = cfg.test_evaluator if isinstance(
        cfg.test_evaluator, list) else [cfg.test_evaluator]
    for evaluator in evaluators:
        if evaluator.get('ann_file') and ann and not osp.isabs(ann):
            evaluator.ann_file = osp.join(root, ann)


def _use_classes(cfg, tuner_path: str) -> None:
    """The head and test dataset take the task's classes (the tuner's
    ``meta.classes``); a tuner without them keeps the config's classes,
    and its head's size goes to the config (check_config then compares
    it with the dataset's classes)."""
    from mmpetl.apis import classifier_outputs
    from mmpetl.checkpoints import load_tuner_checkpoint
    from mmpetl.models import background_slots
    tuner = load_tuner_checkpoint(tuner_path)
    model = cfg.model.get('model', cfg.model)
    head = model.get('bbox_head')
    classes = tuner['meta'].get('classes')
    if classes:
        for _, dataset in dataset_leaves(cfg.test_dataloader.dataset):
            dataset.metainfo = dict(dataset.get('metainfo') or {},
                                    classes=tuple(classes))
        if head is not None:
            head.num_classes = len(classes)
    elif head is not None:
        outputs = classifier_outputs(tuner['state_dict'], 'bbox_head',
                                     tuner_path)
        if outputs is not None:
            head.num_classes = outputs - background_slots(head)


def task_configs(args, base_cfg):
    """``[(task, tuner, config)]`` for several ``TASK=TUNER`` pairs, each
    checked (paths, head vs dataset classes) before any runs; None for the
    single ``--tuner PATH`` form."""
    tuners = parse_pairs(args.tuner, '--tuner')
    if len(tuners) <= 1 and all(n is None for n, _ in tuners):
        if args.task_data:
            raise SystemExit('--task-data needs named tasks: --tuner '
                             'TASK=TUNER --task-data TASK=DATA_ROOT')
        return None
    unnamed = [t for n, t in tuners if n is None]
    if unnamed:
        raise SystemExit(f'with several tuners, name each task: --tuner '
                         f'TASK=TUNER (unnamed: {unnamed})')
    data = dict(parse_pairs(args.task_data, '--task-data'))
    unknown = sorted(set(data) - {n for n, _ in tuners})
    if unknown or None in data:
        raise SystemExit(f'--task-data for task(s) {unknown or [None]} that '
                         f'no --tuner names; give TASK=DATA_ROOT for the '
                         f'tasks of --tuner TASK=TUNER')
    plans, problems = [], []
    for name, tuner in tuners:
        cfg = copy.deepcopy(base_cfg)
        cfg.work_dir = osp.join(base_cfg.work_dir, name)
        cfg.experiment_name = f'{name}_{os.getpid()}'
        if name in data:
            _use_data(cfg, data[name])
        if osp.isfile(tuner):
            _use_classes(cfg, tuner)
        out = args.out and f'{osp.splitext(args.out)[0]}_{name}' \
            f'{osp.splitext(args.out)[1]}'
        show = args.show_dir and osp.join(args.show_dir, name)
        cfg = build_cfg(args, cfg, tuner, out, show)
        try:
            check_config(cfg, mode='test')
        except ConfigError as err:
            problems.append(
                f'task {name!r} ({tuner}): {err}\n  A task\'s head size '
                f'comes from its tuner file: evaluate it on the dataset it '
                f'was trained on (--task-data {name}=DATA_ROOT, with those '
                f'classes in metainfo.classes).')
        if getattr(args, 'tta', False):
            use_tta(cfg)
        plans.append((name, tuner, cfg))
    if problems:
        raise ConfigError('\n'.join(problems))
    return plans


def _number(value):
    return round(float(value), 4) if isinstance(value, (int, float)) \
        else value


def metrics_line(task: str, metrics) -> str:
    """``task NAME: key: value  key: value`` (MMEngine's log format) of a
    task's metrics."""
    return f'task {task}: ' + '  '.join(
        f'{k}: {_number(v)}' for k, v in metrics.items())


def _run(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else \
        RUNNERS.build(cfg)
    return runner.test() or {}


def main():
    args = parse_args()
    mmpetl.apply_patches()  # MMCV/MMEngine as mmpetl runs them (logged)
    base_cfg = load_config(args)
    plans = task_configs(args, base_cfg) if args.tuner else None
    if plans is None:
        tuner = args.tuner[0] if args.tuner else None
        cfg = build_cfg(args, base_cfg, tuner, args.out, args.show_dir)
        check_config(cfg, mode='test')  # paths, num_classes: before builds
        if args.tta:
            use_tta(cfg)
        setup_cpu_distributed(cfg, args.launcher)
        print({k: _number(v) for k, v in _run(cfg).items()})
        return
    setup_cpu_distributed(plans[0][2], args.launcher)
    rows = []
    for name, tuner, cfg in plans:
        if plans[0][2].get('model_wrapper_cfg'):
            cfg.model_wrapper_cfg = plans[0][2].model_wrapper_cfg
        print(f'task {name} ({tuner}), work dir {cfg.work_dir}', flush=True)
        rows.append((name, _run(cfg)))
    for name, metrics in rows:
        print(metrics_line(name, metrics))


if __name__ == '__main__':
    main()
