"""Optimizer step time: one param group per tensor vs grouped settings.

    python tools/analysis_tools/optimizer_step_benchmark.py
    python tools/analysis_tools/optimizer_step_benchmark.py --configs A.py B.py

MMEngine's default constructor makes one param group per tensor; mmpetl's
PETL constructor merges tensors whose settings agree. For each config (a
PETL model with random weights) this builds the optimizer the PETL
constructor builds, and the same tensors with the same lr and weight decay
as one group per tensor, gives every trainable tensor a random gradient and
times ``optimizer.step()`` for both, alternating (median of ``--iters``).
Both with the optimizer's default implementation and with
``foreach=True`` (PyTorch picks the multi-tensor path by default only for
CUDA tensors). The updates are checked to be equal.

Writes ``optimizer_step.{json,md}`` to ``--out-dir`` with date, machine and
command. Time on a quiet machine: other jobs scale step times unevenly.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import shlex
import statistics
import sys
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIGS = ['configs/methods/etta_deformable-detr_r50_coco.py',
           'configs/methods/lora_deformable-detr_r50_coco.py',
           'configs/methods/etta_vit-b16_cifar100.py']


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--iters', type=int, default=30)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--name', default='optimizer_step')
    return p.parse_args()


def per_tensor(groups):
    """The same tensors and settings, one group per tensor (MMEngine)."""
    return [dict({k: v for k, v in g.items() if k != 'params'},
                 params=[p]) for g in groups for p in g['params']]


def _optimizer(cls, groups, defaults, foreach):
    kwargs = dict(defaults)
    if foreach is not None:
        kwargs['foreach'] = foreach
    return cls([dict(g) for g in groups], **kwargs)


def measure(config: str, iters: int, warmup: int):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(osp.join(ROOT, config))
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    grouped = [dict({k: v for k, v in g.items()
                     if k not in ('params', 'initial_lr')},
                    params=list(g['params'])) for g in optim.param_groups]
    defaults = {k: v for k, v in optim.defaults.items()
                if k in ('lr', 'weight_decay', 'betas', 'eps', 'amsgrad')}
    params = [p for g in grouped for p in g['params']]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    rows = []
    for foreach in (None, True):
        variants = {}
        for name, groups in (('per-tensor', per_tensor(grouped)),
                             ('grouped', grouped)):
            # each variant steps its own copy of the tensors
            copies = {id(p): torch.nn.Parameter(p.detach().clone())
                      for p in params}
            for p in params:
                copies[id(p)].grad = p.grad.clone()
            own = [dict(g, params=[copies[id(p)] for p in g['params']])
                   for g in groups]
            variants[name] = (_optimizer(type(optim), own, defaults,
                                         foreach), copies)
        times = {name: [] for name in variants}
        for i in range(warmup + iters):
            order = list(variants) if i % 2 == 0 else list(
                reversed(list(variants)))
            for name in order:
                opt = variants[name][0]
                start = time.perf_counter()
                opt.step()
                elapsed = 1000.0 * (time.perf_counter() - start)
                if i >= warmup:
                    times[name].append(elapsed)
        a, b = (variants[n][1] for n in ('per-tensor', 'grouped'))
        max_diff = max((a[k] - b[k]).abs().max().item() for k in a)
        med = {n: statistics.median(t) for n, t in times.items()}
        rows.append(dict(
            config=config, foreach=('default' if foreach is None else
                                    'True'),
            optimizer=type(optim).__name__, tensors=len(params),
            params=sum(p.numel() for p in params),
            groups_per_tensor=len(per_tensor(grouped)),
            groups_grouped=len(grouped),
            per_tensor_ms=med['per-tensor'], grouped_ms=med['grouped'],
            ratio=med['grouped'] / med['per-tensor'],
            max_update_diff=max_diff))
    return rows


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f
                     if line.startswith('model name')]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f'{cpu}, {os.cpu_count()} cores'


def main():
    args = parse_args()
    import mmpetl  # noqa: F401
    rows = []
    for config in args.configs:
        rows += measure(config, args.iters, args.warmup)
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine(), torch=torch.__version__,
        threads=torch.get_num_threads(),
        command='python ' + ' '.join(shlex.quote(a) for a in sys.argv),
        note='timed on a quiet machine (no other job running)')
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, args.name + '.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows), f, indent=1)
    lines = ['# Optimizer step: one group per tensor vs grouped', '']
    lines += [f'- {k}: {v}' for k, v in header.items()]
    lines += ['', '| config | foreach | tensors | groups (per tensor -> '
              'grouped) | per-tensor ms | grouped ms | grouped / per-tensor '
              '| max update diff |', '|---|---|---:|---|---:|---:|---:|---:|']
    for r in rows:
        lines.append(
            f'| {osp.basename(r["config"])} | {r["foreach"]} | '
            f'{r["tensors"]} | {r["groups_per_tensor"]} -> '
            f'{r["groups_grouped"]} | {r["per_tensor_ms"]:.2f} | '
            f'{r["grouped_ms"]:.2f} | {r["ratio"]:.2f}x | '
            f'{r["max_update_diff"]:.1e} |')
    text = '\n'.join(lines) + '\n'
    with open(osp.join(args.out_dir, args.name + '.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
