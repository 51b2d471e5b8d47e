"""Activation checkpointing of ET-Deformable-DETR: what the layers keep for
the recomputation, and which deformable attention runs, side by side.

    python tools/analysis_tools/ckpt_ablation.py            # CPU, ~5 min
    python tools/analysis_tools/ckpt_ablation.py --readme  # +benchmarks/README

In one process, with the same random weights and synthetic batch (as
tools/analysis_tools/petl_benchmark.py: batch 1 at 256x256), for each
deformable attention off CUDA (``--fallbacks``: MMCV's
``multi_scale_deformable_attn_pytorch``, which keeps every bilinear
sample for backward, and mmpetl's op, which keeps its inputs):

* full fine-tuning, ETTA, ETTA with the encoder and decoder layers
  checkpointed keeping nothing for the recomputation (``keep=[]``);
* with mmpetl's op also: keeping the dropout masks, the deformable
  attention outputs, and both (the default).

Step times are medians of ``--iters`` train steps timed in turn (every
variant one step, then the next round in reverse order), so drift and
other load hit all alike; ratios are to full fine-tuning with the same
deformable attention. Peak memory as in the speed benchmark (live CPU
tensors during a train step). ``grad diff``: the largest difference of
any trainable tensor's gradient from ETTA's without checkpointing (same
weights, batch and dropout seed). Time on a quiet machine.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import shlex
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # petl_benchmark.py

ARCH = 'deformable-detr_r50_coco'
LAYERS = ['encoder_layers', 'decoder_layers']
KEEPS = {'nothing': [], 'masks': ['dropout_masks'],
         'attn out': ['ms_deform_attn'],
         'masks + attn out': ['dropout_masks', 'ms_deform_attn']}
MARKER = 'ckpt-ablation'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--fallbacks', nargs='+', default=['mmcv', 'mmpetl'],
                   choices=['mmcv', 'mmpetl'])
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=8)
    p.add_argument('--size', type=int, nargs=2, default=(256, 256))
    p.add_argument('--out-dir', default=osp.join(ROOT, 'benchmarks',
                                                 'results', 'cpu'))
    p.add_argument('--name', default='ckpt_ablation')
    p.add_argument('--readme', action='store_true',
                   help=f'write the table into benchmarks/README.md between '
                   f'the {MARKER} markers')
    return p.parse_args(argv)


def variants(fallbacks):
    """(label, method, keep or None, fallback) in report order."""
    out = []
    for fallback in fallbacks:
        out += [('full-ft', 'full-ft', None, fallback),
                ('etta', 'etta', None, fallback)]
        keeps = KEEPS if fallback == 'mmpetl' else dict(nothing=[])
        out += [(f'etta+ckpt, keep {label}', 'etta', keep, fallback)
                for label, keep in keeps.items()]
    return out


def build(method, keep, fallback):
    from mmengine.config import Config

    from mmpetl.analysis.measure import build_model_and_optim
    from mmpetl.ops import msda_fallback
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'methods',
                                   f'{method}_{ARCH}.py'))
    if keep is not None:
        cfg.model.activation_checkpointing = dict(layers=LAYERS, keep=keep)
    torch.manual_seed(0)  # same weights for every variant of a method
    with msda_fallback(fallback):
        return build_model_and_optim(cfg, torch.device('cpu'), None)


def gradients(model, data, fallback):
    """Every trainable tensor's gradient for one loss (dropout seed 0)."""
    from mmpetl.ops import msda_fallback
    model.zero_grad(set_to_none=True)
    with msda_fallback(fallback):
        batch = model.data_preprocessor(data, True)
        torch.manual_seed(0)
        losses = model(**batch, mode='loss')
        model.parse_losses(losses)[0].backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()
           if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def run(args):
    from mmpetl.analysis.measure import (cpu_tensor_peak_mib,
                                         interleaved_medians,
                                         model_num_classes, model_task,
                                         synthetic_batch)
    from mmpetl.analysis.saved_tensors import saved_tensors_by_module
    from mmpetl.ops import msda_fallback
    data = None
    built, reference = [], {}  # reference: ETTA's gradients per fallback
    for label, method, keep, fallback in variants(args.fallbacks):
        model, optim = build(method, keep, fallback)
        if data is None:
            data = synthetic_batch(model_task(model), 1, tuple(args.size),
                                   model_num_classes(model))
        model.train()
        diff = None
        if method == 'etta':  # before any step: the weights are the same
            grads = gradients(model, data, fallback)
            if keep is None:
                reference[fallback] = grads
            else:
                ref = reference[fallback]
                diff = max((grads[k] - ref[k]).abs().max().item()
                           for k in ref)
        built.append((label, method, keep, fallback, model, optim, diff))

    def stepper(model, optim, fallback):
        def step():
            with msda_fallback(fallback):
                model.train_step(data, optim)
        return step

    steps = [stepper(m, o, fb) for _, _, _, fb, m, o, _ in built]
    step_ms = interleaved_medians(steps, args.warmup, args.iters,
                                  lambda: None)
    rows = []
    for (label, method, keep, fallback, model, optim, diff), ms, step in zip(
            built, step_ms, steps):
        peak = cpu_tensor_peak_mib(model, optim.optimizer, step)

        def forward(model=model, optim=optim, fallback=fallback):
            with msda_fallback(fallback), optim.optim_context(model):
                batch = model.data_preprocessor(data, True)
                return model(**batch, mode='loss')

        saved = saved_tensors_by_module(model, forward)
        rows.append(dict(variant=label, method=method, keep=keep,
                         fallback=fallback, step_ms=ms, peak_mem_mib=peak,
                         saved_mib=saved['total_mib'], grad_diff=diff))
    for row in rows:
        full = next(r for r in rows if r['method'] == 'full-ft'
                    and r['fallback'] == row['fallback'])
        row['step_x'] = row['step_ms'] / full['step_ms']
        row['mem_x'] = row['peak_mem_mib'] / full['peak_mem_mib']
    return rows


def header(args, load_start):
    from petl_benchmark import machine_description, software
    return dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'), software=software(),
        threads=torch.get_num_threads(),
        command='python ' + ' '.join(
            shlex.quote(a) for a in [osp.relpath(sys.argv[0], ROOT)] +
            sys.argv[1:]),
        setting=f'cpu, fp32, {ARCH}, batch 1 at {args.size[0]}x'
        f'{args.size[1]}, random weights, synthetic data; {args.warmup} '
        f'warm-up rounds, {args.iters} timed rounds (every variant one step '
        f'per round, in turn)',
        load=f'1-min load average {load_start:.2f} at the start, '
        f'{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} CPUs '
        f'(a second job on the machine skews the ratios)')


FALLBACK_NAMES = dict(
    mmcv="MMCV's multi_scale_deformable_attn_pytorch",
    mmpetl="mmpetl's op (mmpetl.ops.ms_deform_attn)")


def markdown(head, rows):
    lines = ['# Activation checkpointing: what the layers keep', '']
    lines += [f'- {k}: {v}' for k, v in head.items()]
    lines += ['- ratios (×): to full fine-tuning with the same deformable '
              'attention, measured in this run; grad diff: largest '
              "difference of a trainable tensor's gradient from ETTA "
              'without checkpointing (same weights, batch, dropout seed)',
              '', '| deformable attention (CPU) | variant | peak mem MiB | '
              'mem × | saved MiB | step ms | step × | grad diff |',
              '|---|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        diff = '–' if r['grad_diff'] is None else f'{r["grad_diff"]:.1e}'
        lines.append(
            f'| {FALLBACK_NAMES[r["fallback"]]} | {r["variant"]} | '
            f'{r["peak_mem_mib"]:.0f} | {r["mem_x"]:.2f}× | '
            f'{r["saved_mib"]:.0f} | {r["step_ms"]:.0f} | '
            f'{r["step_x"]:.2f}× | {diff} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    import mmpetl  # noqa: F401
    load_start = os.getloadavg()[0]
    rows = run(args)
    head = header(args, load_start)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, args.name + '.json'), 'w') as f:
        json.dump(dict(header=head, rows=rows), f, indent=1)
    text = markdown(head, rows)
    with open(osp.join(args.out_dir, args.name + '.md'), 'w') as f:
        f.write(text)
    print(text)
    if args.readme:
        from mmpetl.analysis.report import write_benchmark_section
        write_benchmark_section(ROOT, MARKER, text.split('\n', 2)[2])


if __name__ == '__main__':
    main()
