"""The main job, offline: a source -> target transfer with ET-Deformable-DETR.

    make demo            # = .venv/bin/python tools/demo/run_demo.py

1. generate the transfer dataset (Fashion-MNIST garments pasted on
   scikit-image's photos; source: 5 garment classes, target: 5 others),
2. train a base Deformable DETR (ImageNet MobileNetV2 backbone) on the
   source split and publish it as a model-zoo checkpoint,
3. from that base, on the target split with the same iterations each:
   ET-Deformable-DETR (mmpetl), full fine-tuning and heads-only,
4. evaluate each on target val with COCO's metric (pycocotools), print and
   write the table (``transfer_table.md``/``.json``) and a PNG of target-val
   images with ET-Deformable-DETR's predictions,
5. run ``tools/infer.py`` with the base and ET-Deformable-DETR's tuner
   checkpoint on a few target-val images (``<work-dir>/infer/vis`` and
   ``preds``), the way a user runs a trained task.

Nothing is downloaded. ``--reuse-base`` skips step 2 when a published base
from an earlier run is there. ``--amp float16|bfloat16`` trains every run
with ``mmpetl.AmpOptimWrapper`` (as ``tools/train.py --amp``); ``--device
cuda`` refuses to start without CUDA (MMEngine trains on CUDA whenever it
is available); ``--methods et full`` runs a subset of step 3.
"""
import argparse
import itertools
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import mmpetl  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmpetl.demo.synthetic_coco import make_transfer_dataset  # noqa: E402
from mmpetl.checkpoints import publish_checkpoint  # noqa: E402
from mmpetl import apply_patches  # noqa: E402
from mmpetl.utils import unwrap_model  # noqa: E402

CONFIGS = osp.join(ROOT, 'configs', 'demo')
SOURCE = 'deformable-detr_mnv2_demo-source.py'
METHODS = [
    ('ET-Deformable-DETR (mmpetl)', 'et-deformable-detr_mnv2_demo-target.py'),
    ('full fine-tuning', 'deformable-detr_mnv2_demo-target-full.py'),
    ('heads only', 'deformable-detr_mnv2_demo-target-heads.py'),
]
#: ``--methods`` names of METHODS, in their order
METHOD_KEYS = ['et', 'full', 'heads']


class _KeepMetrics(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.metrics = {}

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


_RUN_INDEX = itertools.count()


def demo_config(name, work_dir, data_root, amp=None, **options):
    """The config of one demo run: ``configs/demo/<name>`` writing to
    ``work_dir`` and reading the demo data at ``data_root``.

    Args:
        name: a file name in ``configs/demo/``.
        work_dir: the run's work directory.
        data_root: the demo dataset (``mmpetl.demo.synthetic_coco``).
        amp: ``'float16'``/``'bfloat16'``: ``mmpetl.AmpOptimWrapper`` as
            ``tools/train.py --amp``; None: the config's optimizer wrapper.
        **options: ``--cfg-options`` style overrides (dotted keys).

    Returns:
        Config: the config (its visualizer named after the run, so that
        runs of one process log into their own folders).
    """
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.work_dir = work_dir
    cfg.merge_from_dict(options)
    if amp:  # as tools/train.py --amp: loss scaling for fp16, none for bf16
        cfg.optim_wrapper.type = 'mmpetl.AmpOptimWrapper'
        cfg.optim_wrapper.dtype = amp
    # MMEngine keeps one visualizer per name for the whole process: under
    # the config's fixed name every later Runner of this process would log
    # its scalars (and the TunerHealthHook's) into the first run's folder
    if cfg.get('visualizer'):
        cfg.visualizer.name = (f"{cfg.visualizer.get('name', 'visualizer')}"
                               f"-{osp.basename(work_dir)}-{next(_RUN_INDEX)}")
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = data_root
    for key in ('val_evaluator', 'test_evaluator'):
        ann = osp.basename(osp.dirname(cfg[key].ann_file))
        cfg[key].ann_file = osp.join(data_root, ann,
                                     osp.basename(cfg[key].ann_file))
    return cfg


def train_run(cfg):
    """Train ``cfg`` with a Runner and keep the last validation metrics.

    Args:
        cfg: a config from :func:`demo_config`.

    Returns:
        tuple: ``(runner, metrics, seconds)``: the finished Runner, the
        last validation epoch's metrics (a dict) and the training time.
    """
    # mmpetl's patches for every run, the plain detectors too (base, full
    # fine-tuning): their checkpoints must load under safe loading (no
    # getattr in the message hub) and MSDA needs the fp32 wrapper under
    # bf16 autocast; apply_patches is idempotent and logs once
    apply_patches()
    runner = Runner.from_cfg(cfg)
    keep = _KeepMetrics()
    runner.register_hook(keep)
    start = time.time()
    runner.train()
    return runner, keep.metrics, time.time() - start


def _mib(path):
    return osp.getsize(path) / 2**20


def train_base(args):
    work_dir = osp.join(args.work_dir, 'base')
    published = sorted(
        f for f in os.listdir(work_dir)
        if f.startswith('deformable-detr_mnv2_demo-source_')) if osp.isdir(
            work_dir) else []
    if args.reuse_base and published:
        path = osp.join(work_dir, published[-1])
        print_log(f'[demo] reusing the published base {path}', 'current')
        return path, None
    cfg = demo_config(SOURCE, work_dir, args.data_root,
               amp=getattr(args, 'amp', None))
    runner, metrics, seconds = train_run(cfg)
    last = runner.message_hub.get_info('last_ckpt')
    path = publish_checkpoint(
        last, osp.join(work_dir, 'deformable-detr_mnv2_demo-source'))
    print_log(f'[demo] base trained in {seconds / 60:.1f} min, source val '
              f'mAP {metrics.get("coco/bbox_mAP", float("nan")):.3f}; '
              f'published {path}', 'current')
    return path, dict(metrics=metrics, seconds=seconds)


def stored_per_task(runner, work_dir):
    """``(trainable, total, kind, MiB)`` of a finished run: its parameter
    counts and the file a task keeps (``'tuner'`` checkpoint, or the
    ``'full'`` published model for full fine-tuning)."""
    model = unwrap_model(runner.model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    last = runner.message_hub.get_info('last_ckpt')
    tuner_file = osp.splitext(last)[0] + '_tuner.pth'
    if osp.exists(tuner_file):
        return trainable, total, 'tuner', _mib(tuner_file)
    # full fine-tuning stores a whole model per task
    full = publish_checkpoint(last, osp.join(work_dir, 'full_weights'))
    return trainable, total, 'full', _mib(full)


def run_method(args, label, config, base_path):
    work_dir = osp.join(args.work_dir, osp.splitext(config)[0])
    cfg = demo_config(config, work_dir, args.data_root, load_from=base_path,
               amp=getattr(args, 'amp', None))
    runner, metrics, seconds = train_run(cfg)
    trainable, total, kind, size = stored_per_task(runner, work_dir)
    stored = f'{kind} checkpoint'
    last = runner.message_hub.get_info('last_ckpt')
    return dict(method=label, config=f'configs/demo/{config}',
                tuner_file=osp.splitext(last)[0] + '_tuner.pth',
                trainable=trainable, total=total,
                trainable_pct=100.0 * trainable / total,
                checkpoint=stored, checkpoint_mib=size,
                bbox_mAP=metrics.get('coco/bbox_mAP', float('nan')),
                bbox_AP50=metrics.get('coco/bbox_mAP_50', float('nan')),
                minutes=seconds / 60, iters=runner.iter,
                device=str(next(unwrap_model(runner.model).parameters())
                           .device),
                amp=getattr(args, 'amp', None) or 'fp32'), runner


def save_predictions_png(runner, cfg_path, out_file, num=4):
    """Target-val images with the model's boxes (DetLocalVisualizer)."""
    import mmcv
    import numpy as np
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer
    model = runner.model
    cfg = Config.fromfile(cfg_path)
    model.cfg = cfg
    dataset = runner.val_dataloader.dataset
    vis = DetLocalVisualizer(name=f'demo_vis_{time.time()}')
    vis.dataset_meta = dataset.metainfo
    tiles = []
    model.eval()
    for index in range(num):
        info = dataset.get_data_info(index)
        result = inference_detector(model, info['img_path'])
        image = mmcv.imread(info['img_path'], channel_order='rgb')
        vis.add_datasample('pred', image, result, draw_gt=False, show=False,
                           pred_score_thr=0.3)
        tiles.append(mmcv.imresize(vis.get_image(), (256, 256)))
    mmcv.imwrite(np.concatenate(tiles, axis=1)[..., ::-1], out_file)


def run_infer(args, base_path, tuner_file, num=4):
    """tools/infer.py with the base and a tuner checkpoint on the first
    ``num`` target-val images; returns the command (as typed) and the
    output folder."""
    val = osp.join(args.data_root, 'images', 'target', 'val')
    images = [osp.join(val, f) for f in sorted(os.listdir(val))[:num]]
    out = osp.join(args.work_dir, 'infer')
    command = [sys.executable, osp.join(ROOT, 'tools', 'infer.py'),
               *images, osp.join(CONFIGS, METHODS[0][1]), '--weights',
               base_path, '--tuner', f'target={tuner_file}', '--out-dir',
               out]
    subprocess.run(command, check=True)
    shown = ['python', 'tools/infer.py', *images,
             f'configs/demo/{METHODS[0][1]}', '--weights', base_path,
             '--tuner', f'target={tuner_file}', '--out-dir', out]
    return ' '.join(shlex.quote(a) for a in shown), out


def format_table(rows):
    lines = ['| method | trainable params | trainable % | checkpoint per task '
             '| bbox mAP | AP50 | iters | wall time |',
             '|---|---:|---:|---|---:|---:|---:|---:|']
    for r in rows:
        lines.append(
            f'| {r["method"]} | {r["trainable"]:,} | '
            f'{r["trainable_pct"]:.2f}% | {r["checkpoint"]} '
            f'{r["checkpoint_mib"]:.2f} MiB | {r["bbox_mAP"]:.3f} | '
            f'{r["bbox_AP50"]:.3f} | {r["iters"]} | {r["minutes"]:.1f} min |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/petl_demo')
    parser.add_argument('--data-root', default='data/petl_demo/')
    parser.add_argument('--reuse-base', action='store_true',
                        help='skip base training if a published base exists')
    parser.add_argument('--amp', choices=['float16', 'bfloat16'],
                        help='mixed precision for every run '
                        '(mmpetl.AmpOptimWrapper; GPU)')
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'],
                        default='auto',
                        help='auto: MMEngine trains on CUDA when available; '
                        'cuda/cpu: refuse to start on another device')
    parser.add_argument('--methods', nargs='+', choices=METHOD_KEYS,
                        default=METHOD_KEYS,
                        help='target runs of step 3 (et must be one: the '
                        'predictions PNG and the inference use its tuner)')
    args = parser.parse_args(argv)
    if 'et' not in args.methods:
        parser.error('--methods must include et (step 4 and 5 use the '
                     'ET-Deformable-DETR run); e.g. --methods et full')
    return args


def check_device(args):
    """Refuse a device other than ``--device`` (MMEngine's Runner picks
    CUDA whenever it is available)."""
    import torch
    cuda = torch.cuda.is_available()
    if args.device == 'cuda' and not cuda:
        raise SystemExit('--device cuda: torch.cuda.is_available() is '
                         'False; run on a GPU machine or drop --device')
    if args.device == 'cpu' and cuda:
        raise SystemExit('--device cpu: CUDA is visible and MMEngine would '
                         'train on it; run with CUDA_VISIBLE_DEVICES= '
                         'to train on the CPU')
    if args.amp and not cuda:
        raise SystemExit('--amp needs CUDA (MMEngine\'s AmpOptimWrapper '
                         'runs on GPUs only); drop --amp on the CPU')


def main():
    args = parse_args()
    check_device(args)
    # MMCV and MMEngine as mmpetl runs them, for the plain detectors too
    # (base, full fine-tuning): their checkpoints load under safe loading,
    # and under --amp MMCV's CUDA op (no bf16 kernel) gets the fp32 wrapper
    apply_patches()
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    make_transfer_dataset(args.data_root)
    base_path, base = train_base(args)
    rows, et_runner = [], None
    for key, (label, config) in zip(METHOD_KEYS, METHODS):
        if key not in args.methods:
            continue
        row, runner = run_method(args, label, config, base_path)
        rows.append(row)
        if et_runner is None:
            et_runner = runner
            png = osp.join(args.work_dir, 'et_predictions_target_val.png')
            save_predictions_png(runner, osp.join(CONFIGS, config), png)
    infer_cmd, infer_out = run_infer(args, base_path, rows[0]['tuner_file'])
    table = format_table(rows)
    base_mib = _mib(base_path)
    summary = (
        f'mmpetl demo: source -> target transfer, '
        f'{time.strftime("%Y-%m-%d %H:%M")}, total '
        f'{(time.time() - start) / 60:.1f} min on {rows[0]["device"]}, '
        f'{rows[0]["amp"]}\n'
        f'base: {osp.basename(base_path)} ({base_mib:.1f} MiB)' +
        (f', source val mAP {base["metrics"].get("coco/bbox_mAP", 0):.3f}'
         if base else ' (reused)') + '\n\n' + table + '\n\n'
        f'predictions: {png}\n'
        f'inference with the ET tuner on target-val images (vis/, preds/ '
        f'in {infer_out}):\n  {infer_cmd}\n')
    print(summary)
    with open(osp.join(args.work_dir, 'transfer_table.md'), 'w') as f:
        f.write(summary)
    with open(osp.join(args.work_dir, 'transfer_table.json'), 'w') as f:
        json.dump(dict(base=base_path, base_mib=base_mib, rows=rows), f,
                  indent=2)


if __name__ == '__main__':
    main()
