"""Does the scaled prefix learn? Forms x inits, prefix-only and in ETTA.

    python tools/analysis_tools/prefix_ablation.py         # seeds 0 1 2
    python tools/analysis_tools/prefix_ablation.py --seeds 0 --tasks vit

Two transfers, the ones the accuracy benchmarks use: the detection demo
(Deformable DETR d=128 on MobileNetV2, source -> target garments, 200
iterations; ``tools/analysis_tools/accuracy_benchmark.py``) and the ViT
classification transfer (Fashion-MNIST 0-4 -> 5-9, 250 iterations;
``tools/analysis_tools/vit_accuracy_benchmark.py``). Every variant starts
from the same base with the same data, schedule and optimiser; only the
tuners (or the weight-decay policy) differ:

* prefix-only and ETTA (parallel adapters + prefixes) with the prefixes
  ``old`` (mmpetl's first default: joint form on MultiheadAttention, random
  N(0, 0.02^2) prefixes; on deformable attention a random branch with
  s = 0), ``joint-scaled``, ``parallel-scaled`` (the parallel form is
  exact at init), ``joint-activations``, ``parallel-activations`` (deformable
  attention always takes the parallel form);
* baselines: heads-only, parallel adapter alone, LoRA, full fine-tuning;
* ETTA (parallel-scaled) with weight decay on tuner biases, norms, scales
  and prefixes (``+decay``: the policy before the prefix issue), and with
  the prefixes at 3x / 10x the adapters' lr (``+prefix-lr3``,
  ``+prefix-lr10``: does a per-type lr multiplier matter?);
* detection only: LoRA with Deformable DETR's sampling offsets at the
  tuner lr (``lora:offsets-lr1``, the policy before issue 11) and without
  LoRA on the offsets (``lora:no-offsets``), beside the default
  (offsets at MMDetection's 0.1x).

The TunerHealthHook (detection) and a TunerProbe (ViT) record the prefix
scale s and share lam every 10 iterations; seed 0's trajectories go to the
PNG. Writes ``benchmarks/results/cpu/prefix_ablation.{md,json,png}``;
finished runs are reused from ``<work-dir>/*/runs.json`` with ``--reuse``;
``--report-only`` trains nothing and reports the finished runs (a variant
may then have fewer seeds: the table lists each one's).
"""
import argparse
import collections
import datetime
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import accuracy_benchmark as det  # noqa: E402
import vit_accuracy_benchmark as vit  # noqa: E402

ET_CONFIG = det.ET_CONFIG
DET_L, VIT_L = 32, 16  # prefix lengths (the demo config's, the ViT's)
MHA = ['decoder_self_attn']
MSDA = ['encoder_self_attn', 'decoder_cross_attn']


def det_prefixes(name):
    """Prefix tuner configs of a variant on the demo Deformable DETR."""
    prefix = dict(type='ScaledPrefix', num_prefix=DET_L)
    if name == 'old':
        return [dict(prefix, presets=MHA, form='joint', init='random'),
                dict(prefix, presets=MSDA, init='random', scale=0.0)]
    form, init = name.split('-')
    if form == 'parallel':
        return [dict(prefix, presets=['attn'], init=init)]
    return [dict(prefix, presets=MHA, form='joint', init=init),
            dict(prefix, presets=MSDA, init=init)]


def vit_prefixes(name):
    prefix = dict(type='ScaledPrefix', num_prefix=VIT_L, presets=['attn'])
    if name == 'old':
        return [dict(prefix, form='joint', init='random')]
    form, init = name.split('-')
    return [dict(prefix, form=form, init=init)]


PREFIX_VARIANTS = ['old', 'joint-scaled', 'parallel-scaled',
                   'joint-activations', 'parallel-activations']
PREFIX_LR_MULTS = (3, 10)
#: the host a prefix tuner type attends in, for the plot's legends
HOST_OF = {'ScaledPrefix': 'attention', 'DeformablePrefix': 'deformable'}
DECAY_ALL = dict(norm_decay_mult=1.0, bias_decay_mult=1.0,
                 tuner_token_decay_mult=1.0)


def detection_variants():
    """name -> (demo config, model overrides, config options)"""
    adapter = dict(type='ParallelAdapter', presets=['ffn'], bottleneck=128)
    lora = dict(type='LoRA', presets=['attn', 'ffn'], rank=16, alpha=16)
    out = {name: (config, overrides, {})
           for name, (config, overrides) in det.METHODS.items()
           if name in ('full-ft', 'heads-only', 'adapter', 'lora')}
    for v in PREFIX_VARIANTS:
        out[f'prefix:{v}'] = (ET_CONFIG, dict(tuners=det_prefixes(v)), {})
        out[f'etta:{v}'] = (ET_CONFIG,
                            dict(tuners=[adapter] + det_prefixes(v)), {})
    out['etta:parallel-scaled+decay'] = (
        ET_CONFIG, dict(tuners=[adapter] + det_prefixes('parallel-scaled')),
        {f'optim_wrapper.paramwise_cfg.{k}': v for k, v in DECAY_ALL.items()})
    for mult in PREFIX_LR_MULTS:
        out[f'etta:parallel-scaled+prefix-lr{mult}'] = (
            ET_CONFIG, dict(tuners=[adapter] + [
                dict(t, lr_mult=mult)
                for t in det_prefixes('parallel-scaled')]), {})
    out['lora:offsets-lr1'] = (
        ET_CONFIG, dict(tuners=[lora]),
        {'optim_wrapper.paramwise_cfg.tuner_follow_keys': []})
    out['lora:no-offsets'] = (
        ET_CONFIG, dict(tuners=[dict(lora, msda_linears=['value_proj',
                                                          'output_proj'])]),
        {})
    return out


def vit_variants():
    """name -> (PETLModel arguments or None, paramwise_cfg)"""
    adapter = vit.METHODS['adapter']['tuners'][0]
    out = {name: (vit.METHODS[name], None)
           for name in ('full-ft', 'heads-only', 'adapter', 'lora')}
    for v in PREFIX_VARIANTS:
        out[f'prefix:{v}'] = (dict(tuners=vit_prefixes(v)), None)
        out[f'etta:{v}'] = (dict(tuners=[adapter] + vit_prefixes(v)), None)
    out['etta:parallel-scaled+decay'] = (
        dict(tuners=[adapter] + vit_prefixes('parallel-scaled')), DECAY_ALL)
    for mult in PREFIX_LR_MULTS:
        out[f'etta:parallel-scaled+prefix-lr{mult}'] = (
            dict(tuners=[adapter] + [dict(t, lr_mult=mult) for t in
                                     vit_prefixes('parallel-scaled')]), None)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--tasks', nargs='+', default=['detection', 'vit'],
                   choices=['detection', 'vit'])
    p.add_argument('--variants', nargs='+',
                   help='only these variant names (default: all)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--work-dir', default='work_dirs/prefix_ablation')
    p.add_argument('--demo-work-dir', default='work_dirs/petl_demo')
    p.add_argument('--data-root', default='data/petl_demo/')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--iters', type=int, help='detection iterations '
                   '(tests only; the table is for 200)')
    p.add_argument('--vit-iters', type=int, default=250)
    p.add_argument('--vit-base-iters', type=int, default=800,
                   help='iterations of the ViT base (tests only)')
    p.add_argument('--reuse', action='store_true')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: the tables from the finished runs '
                   'of <work-dir>/*/runs.json (implies --reuse)')
    p.add_argument('--readme', action='store_true',
                   help='copy the tables into benchmarks/README.md')
    return p.parse_args(argv)


def _runs_file(args, task):
    return osp.join(args.work_dir, task, 'runs.json')


def _load(path):
    if not osp.exists(path):
        return {}
    with open(path) as f:
        return {(r['method'], r['seed']): r for r in json.load(f)}


def _save(path, runs):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(list(runs.values()), f, indent=1)


def _wanted(args, names):
    return [n for n in names if not args.variants or n in args.variants]


def _health_trajectory(work_dir):
    """[(iteration, {tuner type: {stat: mean}})] from the run's scalars."""
    paths = sorted(
        osp.join(root, f) for root, _, files in os.walk(work_dir)
        for f in files if f == 'scalars.json')
    if not paths:
        return []
    out = []
    with open(paths[-1]) as f:
        for line in f:
            rec = json.loads(line)
            kinds = {}
            for key, value in rec.items():
                parts = key.split('/')
                if len(parts) == 3 and parts[0] == 'tuner':
                    kinds.setdefault(parts[1], {})[parts[2]] = value
            if kinds:
                out.append((rec['step'], kinds))
    return out


def run_detection(args):
    path = _runs_file(args, 'detection')
    if args.report_only:  # the runs' own base, whatever was published since
        runs = _load(path)
        counts = collections.Counter(r['base'] for r in runs.values())
        base = counts.most_common(1)[0][0] if counts else 'none'
        return ({k: v for k, v in runs.items() if v['base'] == base},
                f'{base} (the demo base with the most runs)')
    det_args = argparse.Namespace(work_dir=osp.join(args.work_dir,
                                                    'detection'),
                                  data_root=args.data_root, iters=args.iters)
    det.run_demo.make_transfer_dataset(args.data_root)
    base_path, _ = det.run_demo.train_base(argparse.Namespace(
        work_dir=args.demo_work_dir, data_root=args.data_root,
        reuse_base=True))
    runs = _load(path) if args.reuse else {}
    variants = detection_variants()
    for seed in args.seeds:
        for name in _wanted(args, variants):
            if (name, seed) in runs and runs[(name, seed)]['base'] == \
                    osp.basename(base_path):
                continue
            config, overrides, options = variants[name]
            print(f'[ablation] detection {name} seed {seed} ...', flush=True)
            run = det.run_config(det_args, name, config, overrides, seed,
                                 base_path, options, health_interval=10)
            run.update(base=osp.basename(base_path),
                       trajectory=_health_trajectory(run['work_dir']))
            print(f"[ablation]   mAP {run['bbox_mAP']:.3f}", flush=True)
            runs[(name, seed)] = run
            _save(path, runs)
    runs = {k: v for k, v in runs.items()  # runs of an older base: not
            if v['base'] == osp.basename(base_path)}  # comparable
    return runs, f'{osp.basename(base_path)} (the demo base)'


def run_vit(args):
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    vit_args = vit.parse_args(['--iters', str(args.vit_iters),
                               '--base-iters', str(args.vit_base_iters),
                               '--work-dir', osp.join(args.work_dir, 'vit')])
    base_state, base_path, base_top1 = vit.train_base(vit_args)
    target = vit.load_split([5, 6, 7, 8, 9])
    path = _runs_file(args, 'vit')
    runs = _load(path) if args.reuse or args.report_only else {}
    variants = vit_variants()
    for seed in args.seeds:
        for name in _wanted(args, variants):
            if (name, seed) in runs or args.report_only:
                continue
            spec, paramwise = variants[name]
            print(f'[ablation] vit {name} seed {seed} ...', flush=True)
            run = vit.run_spec(vit_args, name, spec, seed, base_state,
                               target, paramwise, probe_every=10)
            print(f"[ablation]   top-1 {run['top1']:.3f}", flush=True)
            runs[(name, seed)] = run
            _save(path, runs)
    return runs, (f'ViT d={vit.DIMS} trained {vit_args.base_iters} '
                  f'iterations on classes 0-4 (source top-1 '
                  f'{base_top1:.3f})')


def table(runs, metric, label):
    from mmpetl.analysis.report import seed_summary
    rows = seed_summary(list(runs.values()), metric, lambda mine: dict(
        trainable_pct=mine[0]['trainable_pct']))
    by_name = {r['method']: r for r in rows}
    heads = by_name.get('heads-only')
    adapter = by_name.get('adapter')
    lines = [f'| variant | trainable % | {label} mean | std | per seed | '
             f'vs heads-only | vs adapter |',
             '|---|---:|---:|---:|---|---:|---:|']
    for r in rows:
        def diff(ref):
            return '–' if ref is None else \
                f"{100 * (r['mean'] - ref['mean']):+.1f} pt"
        std = '–' if len(r['values']) < 2 else f"{r['std']:.3f}"
        lines.append(
            f"| {r['method']} | {r['trainable_pct']:.2f}% | "
            f"{r['mean']:.3f} | {std} | "
            f"{', '.join(f'{v:.3f}' for v in r['values'])} | {diff(heads)} "
            f"| {diff(adapter)} |")
    return rows, '\n'.join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 *
                                                       len(results)),
                             squeeze=False)
    for row, (task, runs) in enumerate(results.items()):
        for col, stat in enumerate(('scale', 'share')):
            ax = axes[row][col]
            for (name, seed), run in sorted(runs.items()):
                if seed != min(s for _, s in runs) or not name.startswith(
                        'etta:') or '+' in name:
                    continue
                for kind in ('ScaledPrefix', 'DeformablePrefix'):
                    points = [(step, stats[kind][stat])
                              for step, stats in run.get('trajectory', [])
                              if stat in stats.get(kind, {})]
                    if points:
                        ax.plot(*zip(*points), marker='.',
                                label=f'{name[5:]} ({HOST_OF[kind]})')
            what = 'scale s' if stat == 'scale' else 'share lambda'
            ax.set_title(f'{task}: prefix {what} (ETTA, seed 0)')
            ax.set_xlabel('iteration')
            ax.set_yscale('symlog', linthresh=1e-3)
            if ax.lines:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    results, bases, sections, rows_out = {}, {}, [], {}
    for task in args.tasks:
        runs, base = (run_detection if task == 'detection' else run_vit)(
            args)
        runs = {k: v for k, v in runs.items() if k[1] in args.seeds}
        results[task], bases[task] = runs, base
        metric, label = (('bbox_mAP', 'mAP') if task == 'detection' else
                         ('top1', 'top-1'))
        rows, text = table(runs, metric, label)
        rows_out[task] = rows
        sections.append(f'## {task}\n\n- base: {base}\n\n{text}\n')
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from petl_benchmark import machine_description
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'),
        command='python tools/analysis_tools/prefix_ablation.py ' +
        ' '.join(sys.argv[1:]),
        seeds=' '.join(map(str, args.seeds)),
        note='accuracy only: wall times include other jobs on the machine')
    text = '\n'.join(
        ['# Prefix ablation: forms x inits, prefix-only and in ETTA', ''] +
        [f'- {k}: {v}' for k, v in header.items()] + [''] + sections +
        ['![prefix scale and share trajectories](prefix_ablation.png)'])
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'prefix_ablation.md'), 'w') as f:
        f.write(text + '\n')
    with open(osp.join(args.out_dir, 'prefix_ablation.json'), 'w') as f:
        json.dump(dict(header=header, bases=bases, rows=rows_out,
                       runs={t: list(r.values())
                             for t, r in results.items()}), f, indent=1)
    plot(results, osp.join(args.out_dir, 'prefix_ablation.png'))
    if args.readme:
        from mmpetl.analysis.report import write_benchmark_section
        rel = osp.relpath(args.out_dir, osp.join(ROOT, 'benchmarks'))
        write_benchmark_section(ROOT, 'prefix-ablation', '\n'.join(
            [f'- {k}: {v}' for k, v in header.items()] + [''] +
            [s.replace('## ', '#### ', 1) for s in sections] +
            [f'![prefix scale and share trajectories]'
             f'({rel}/prefix_ablation.png)']))
    print(text)


if __name__ == '__main__':
    main()
