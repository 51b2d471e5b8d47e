"""Evaluate a checkpoint, or a base checkpoint plus a tuner checkpoint.

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG BASE.pth --tuner work_dirs/x/iter_500_tuner.pth

With --tuner, CHECKPOINT is the shared base: it is loaded first, then the
tuner tensors, after checking that the tuners were trained on this base
(--force-base applies them to another base of the same architecture).
Mirrors MMDetection's tools/test.py.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import mmpetl  # noqa: E402,F401
from tool_utils import load_config, setup_cpu_distributed  # noqa: E402
from mmpetl.utils.config_check import check_config  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint (the base with --tuner)')
    parser.add_argument('--tuner', help='a tuner checkpoint (*_tuner.pth)')
    parser.add_argument('--force-base', action='store_true',
                        help='apply --tuner to a base other than its own')
    parser.add_argument('--work-dir', help='the dir for evaluation metrics')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show-dir', help='save images with predictions')
    parser.add_argument('--amp', action='store_true', help='test with amp')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.tuner:
        hooks = list(cfg.get('custom_hooks', []))
        hooks.append(dict(type='mmpetl.LoadTunerHook',
                          tuner_checkpoint=args.tuner,
                          force_base=args.force_base))
        cfg.custom_hooks = hooks
    if args.amp:
        cfg.test_cfg.fp16 = True
    if args.show_dir:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise SystemExit('--show-dir needs a `visualization` hook in '
                             'default_hooks (DetVisualizationHook)')
        vis.update(draw=True, test_out_dir=args.show_dir)
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must end with .pkl or .pickle')
        cfg.test_evaluator = [cfg.test_evaluator, dict(
            type='DumpDetResults', out_file_path=args.out)] if not isinstance(
                cfg.test_evaluator, list) else cfg.test_evaluator + [
                    dict(type='DumpDetResults', out_file_path=args.out)]
    return cfg


def main():
    args = parse_args()
    cfg = build_cfg(args)
    check_config(cfg, mode='test')  # paths, num_classes: before any build
    setup_cpu_distributed(cfg, args.launcher)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else \
        RUNNERS.build(cfg)
    metrics = runner.test()
    print({k: round(float(v), 4) if isinstance(v, (int, float)) else v
           for k, v in (metrics or {}).items()})


if __name__ == '__main__':
    main()
