"""UniPT on the demo transfer: mmpetl's first design against the authors'.

    python tools/analysis_tools/unipt_ablation.py            # seed 0
    python tools/analysis_tools/unipt_ablation.py --seeds 0 1 \
        --variants official residual

The demo's source -> target transfer of
``tools/analysis_tools/accuracy_benchmark.py`` (same base, data, 200
iterations, AdamW lr 1e-3 for the heads, tuners x2), UniPT trained beside
the frozen detector (d = 128, 2 + 2 layers). Variants: ``v1`` (mmpetl's
first design), ``official`` (the authors' design: output replaces the
decoder states, side lr 10x the heads'), then the official design with one
group of differences taken back at a time, and the residual output
(mmpetl's default). Writes ``benchmarks/results/cpu/unipt_ablation.{md,json}``
(runs are kept in ``<work-dir>/runs.json``; ``--reuse`` skips finished
ones). Accuracy only: the wall times include other jobs.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import statistics
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools', 'demo'))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import accuracy_benchmark as acc  # noqa: E402  (run_config, the demo)
import run_demo  # noqa: E402

# The demo's tuners get 2x the heads' lr (tuner_lr_mult=2.0): lr_mult=5
# makes the authors' 10:1.
OFFICIAL = dict(type='UniPT', output='replace', lr_mult=5.0)
# name -> (what differs, the parallel config); None: heads only
VARIANTS = {
    'heads-only': ('no UniPT: the heads alone', None),
    'v1': ("mmpetl's first design (r = 32 = d/4, decoder states only, "
           'softmax mix, per-token confidence, residual, side lr 2x)',
           dict(type='UniPT', variant='v1', bottleneck=32, all_layers=True)),
    'official': ("the authors' design: width d/2, side memory + "
                 'cross-attention, nonlinear P, final LN, output replaces '
                 'the decoder states, side lr 10x',
                 OFFICIAL),
    'residual': ('official, output h + out (final LN scale 0 at init: '
                 "exact at step 0); mmpetl's default",
                 dict(OFFICIAL, output='residual')),
    'no-memory': ('official without the encoder side memory and the '
                  'decoder cross-attention (#1)',
                  dict(OFFICIAL, cross_attention=False)),
    'width-d/4': ('official at width d/4 = 32 instead of d/2 (#2)',
                  dict(OFFICIAL, bottleneck=32)),
    'no-mlp': ('official with P = identity and no final LN (#3)',
               dict(OFFICIAL, mlp=False)),
    'small-as-v1': ('official with the small ones as v1: LN before the '
                    'projection, softmax mix, per-token confidence, all '
                    'layers (#5-8)',
                    dict(OFFICIAL, norm='before', mix='softmax',
                         gate='token', layers='all')),
    'lr-2x': ('official with side lr 2x the heads (the demo tuners\' '
              'default) instead of 10x (#9)', dict(OFFICIAL, lr_mult=1.0)),
    'encoder-mix': ('official plus the authors\' N_enc x N_enc mix on the '
                    'encoder side (off by default: memory)',
                    dict(OFFICIAL, encoder_mix=True)),
    'residual-lr-2x': ('residual at side lr 2x',
                       dict(OFFICIAL, output='residual', lr_mult=1.0)),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=list(VARIANTS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--work-dir', default='work_dirs/unipt_ablation')
    p.add_argument('--demo-work-dir', default='work_dirs/petl_demo')
    p.add_argument('--data-root', default='data/petl_demo/')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--iters', type=int, help='override the 200 iterations '
                   '(tests only)')
    p.add_argument('--reuse', action='store_true',
                   help='reuse finished runs in <work-dir>/runs.json')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing, report the finished runs')
    return p.parse_args()


def published_base(demo_work_dir):
    """The demo base ``make demo`` published (never trained here)."""
    base_dir = osp.join(demo_work_dir, 'base')
    found = sorted(f for f in os.listdir(base_dir)
                   if f.startswith('deformable-detr_mnv2_demo-source_')
                   and f.endswith('.pth')) if osp.isdir(base_dir) else []
    if not found:
        raise SystemExit(f'no published demo base in {base_dir}: run '
                         f'`make demo` (or accuracy_benchmark.py) first')
    return osp.join(base_dir, found[-1])


def run_variant(args, name, seed, base_path):
    _, parallel = VARIANTS[name]
    if parallel is None:
        return acc.run_config(args, name,
                              'deformable-detr_mnv2_demo-target-heads.py',
                              None, seed, base_path)
    return acc.run_config(args, name, acc.ET_CONFIG,
                          dict(tuners=[], parallel=parallel), seed,
                          base_path)


def markdown(rows, header):
    lines = [
        '# UniPT ablation: demo source -> target transfer', '',
        f"- date: {header['date']}", f"- machine: {header['machine']}",
        f"- command: `{header['command']}`", f"- base: {header['base']}",
        f"- seeds: {header['seeds']}; mAP = COCO bbox mAP on target val "
        '(150 images), 200 iterations, AdamW lr 1e-3 for the heads',
        '- accuracy only; other jobs were running (wall minutes are not a '
        'speed comparison)',
        '- the demo detector has 2 encoder + 2 decoder layers: UniPT reads '
        'layer 1 and the last of each (every other + last), so the '
        'per-image confidence has one layer to weigh and `layers=all` '
        'reads the same layers', '',
        '| variant | what differs | trainable | mAP mean | per seed | '
        'Δ vs heads-only | Δ vs official | AP50 | wall min/run |',
        '|---|---|---:|---:|---|---:|---:|---:|---:|']
    means = {r['method']: r['mean'] for r in rows}
    for r in rows:
        def delta(ref):
            if ref not in means or r['method'] == ref:
                return '–'
            return f"{100 * (r['mean'] - means[ref]):+.1f} pt"
        lines.append(
            f"| {r['method']} | {VARIANTS[r['method']][0]} | "
            f"{r['trainable']:,} | {r['mean']:.3f} | "
            f"{', '.join(f'{m:.3f}' for m in r['values'])} | "
            f"{delta('heads-only')} | {delta('official')} | "
            f"{r['ap50']:.3f} | {r['minutes']:.1f} |")
    return '\n'.join(lines) + '\n'


def summarize(runs, order):
    rows = []
    for name in order:
        mine = [r for r in runs if r['method'] == name]
        if not mine:
            continue
        values = [r['bbox_mAP'] for r in mine]
        rows.append(dict(
            method=name, values=values, mean=statistics.mean(values),
            ap50=statistics.mean(r['bbox_AP50'] for r in mine),
            trainable=mine[0]['trainable'],
            minutes=statistics.mean(r['minutes'] for r in mine),
            parallel=VARIANTS[name][1]))
    return rows


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    run_demo.make_transfer_dataset(args.data_root)
    base_path = published_base(args.demo_work_dir)
    runs_file = osp.join(args.work_dir, 'runs.json')
    done = {}
    if (args.reuse or args.report_only) and osp.exists(runs_file):
        with open(runs_file) as f:
            done = {(r['method'], r['seed']): r for r in json.load(f)
                    if r.get('base') == osp.basename(base_path)
                    and r.get('iters_asked') == args.iters}
    runs = []
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in done:
                runs.append(done[(name, seed)])
                continue
            if args.report_only:
                continue
            print(f'[unipt] {name} seed {seed} ...', flush=True)
            run = run_variant(args, name, seed, base_path)
            run.update(base=osp.basename(base_path), iters_asked=args.iters)
            print(f"[unipt]   mAP {run['bbox_mAP']:.3f} "
                  f"({run['minutes']:.1f} min)", flush=True)
            runs.append(run)
            keep = runs + [r for k, r in done.items() if r not in runs]
            with open(runs_file, 'w') as f:
                json.dump(keep, f, indent=1, default=str)
    rows = summarize(runs, args.variants)
    from petl_benchmark import machine_description
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'),
        command='python ' + ' '.join(
            [osp.relpath(osp.abspath(sys.argv[0]), ROOT)] + sys.argv[1:]),
        base=osp.relpath(base_path, ROOT), seeds=args.seeds,
        note='accuracy only; other jobs were running')
    with open(osp.join(args.out_dir, 'unipt_ablation.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows, runs=runs), f, indent=1,
                  default=str)
    with open(osp.join(args.out_dir, 'unipt_ablation.md'), 'w') as f:
        f.write(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == '__main__':
    main()
