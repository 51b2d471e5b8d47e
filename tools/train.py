"""Train a detector (or classifier) config, PETL or not.

    python tools/train.py configs/et_deformable_detr_coco.py
    bash tools/dist_train.sh configs/et_deformable_detr_coco.py 8

Takes every flag of MMDetection 3.3's tools/train.py, with its meaning:
--work-dir, --amp, --auto-scale-lr, --resume [CKPT], --cfg-options,
--launcher, --local_rank/--local-rank; mmpetl adds --amp-dtype.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import mmpetl  # noqa: E402,F401  (before mmdet: transformers guard etc.)
from tool_utils import load_config, setup_cpu_distributed  # noqa: E402
from mmpetl.utils.config_check import ConfigError, check_config  # noqa
from mmpetl.engine.start import check_base_loaded, resolve_resume  # noqa


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: MMDetection 3.3 tools/train.py's flags plus
    mmpetl's."""
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision (fp16; see --amp-dtype)')
    parser.add_argument('--amp-dtype', default='float16',
                        choices=['float16', 'bfloat16'])
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by the actual over the config\'s '
        'auto_scale_lr.base_batch_size (MMEngine\'s linear rule)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, key=value (a.b=c for nested keys)')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_auto_scale_lr(cfg) -> None:
    """``--auto-scale-lr``: MMEngine scales the lr by the total batch size
    over ``auto_scale_lr.base_batch_size``, which the config must give.

    Raises:
        ConfigError: the config has no ``auto_scale_lr.base_batch_size``.
    """
    scale = cfg.get('auto_scale_lr') or {}
    if 'base_batch_size' not in scale:
        raise ConfigError(
            f'--auto-scale-lr: the config has no auto_scale_lr.'
            f'base_batch_size (the total batch size its lr was set for), so '
            f'there is nothing to scale from. Add auto_scale_lr = dict('
            f'enable=False, base_batch_size=N) to the config (N: GPUs x '
            f'samples per GPU of the run the lr was tuned on), or drop '
            f'--auto-scale-lr.')
    cfg.auto_scale_lr = dict(scale, enable=True)


def build_cfg(args):
    cfg = load_config(args)
    if getattr(args, 'auto_scale_lr', False):  # (a Namespace from code)
        enable_auto_scale_lr(cfg)
    if args.amp:  # dynamic loss scaling for fp16, none for bf16
        cfg.optim_wrapper.type = 'mmpetl.AmpOptimWrapper'
        cfg.optim_wrapper.dtype = args.amp_dtype
    # --resume without a path: the work dir's last checkpoint, else the
    # config's load_from (never a random frozen base; see mmpetl.engine.start)
    note = resolve_resume(cfg, args.resume)
    if note:
        print(note)
    return cfg


def main():
    args = parse_args()
    cfg = build_cfg(args)
    check_config(cfg, mode='train')  # paths, num_classes: before any build
    check_base_loaded(cfg)  # a PETL model's frozen base from a checkpoint
    mmpetl.apply_patches()  # MMCV/MMEngine as mmpetl runs them (logged)
    setup_cpu_distributed(cfg, args.launcher)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
