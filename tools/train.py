"""Train a detector (or classifier) config, PETL or not.

    python tools/train.py configs/et_deformable_detr_coco.py
    bash tools/dist_train.sh configs/et_deformable_detr_coco.py 8

Mirrors MMDetection's tools/train.py: --work-dir, --amp, --resume,
--cfg-options, --launcher, --local-rank.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import mmpetl  # noqa: E402,F401  (before mmdet: transformers guard etc.)
from tool_utils import load_config, setup_cpu_distributed  # noqa: E402
from mmpetl.utils.config_check import check_config  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision (fp16; see --amp-dtype)')
    parser.add_argument('--amp-dtype', default='float16',
                        choices=['float16', 'bfloat16'])
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
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg = load_config(args)
    if args.amp:  # dynamic loss scaling for fp16, none for bf16
        cfg.optim_wrapper.type = 'mmpetl.AmpOptimWrapper'
        cfg.optim_wrapper.dtype = args.amp_dtype
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main():
    args = parse_args()
    cfg = build_cfg(args)
    check_config(cfg, mode='train')  # paths, num_classes: before any build
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
