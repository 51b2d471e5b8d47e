"""What tools/train.py and tools/test.py share: config loading, launchers."""
import os
import os.path as osp

import torch
from mmengine.config import Config


def load_config(args):
    """Config + --cfg-options + launcher + work dir (MMDetection's rules:
    --work-dir, else the config's work_dir, else ./work_dirs/<config>)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def setup_cpu_distributed(cfg, launcher: str, logger_print=print) -> None:
    """Multi-process runs on machines without CUDA: gloo, DDP on CPU.

    MMEngine 0.10.7 calls ``torch.cuda.set_device`` in its pytorch launcher
    and hands ``device_ids=[LOCAL_RANK]`` to DDP; neither works without a
    GPU. Here the process group is started with gloo first (MMEngine then
    skips its own init) and DDP gets ``device_ids=None``.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel', device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if int(os.environ.get('RANK', 0)) == 0:
        logger_print(f'mmpetl: no CUDA device: {dist.get_world_size()} '
                     f'processes on CPU with the gloo backend')


def parse_pairs(values, option: str):
    """``[(name, value)]`` from ``NAME=VALUE`` arguments (``--tuner``,
    ``--task-data``); a bare value (or an existing path containing ``=``)
    gets the name None. A name given twice is refused."""
    pairs = []
    for value in values or []:
        name, sep, rest = str(value).partition('=')
        if not sep or not name or osp.exists(value):
            pairs.append((None, str(value)))
        else:
            pairs.append((name, rest))
    names = [n for n, _ in pairs if n is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f'task name(s) {twice} given twice in {option}; '
                         f'name each task once: {option} NAME=...')
    return pairs
