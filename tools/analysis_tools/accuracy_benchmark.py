"""Accuracy of every method on the demo's source -> target transfer.

    python tools/analysis_tools/accuracy_benchmark.py      # seeds 0 1 2
    python tools/analysis_tools/accuracy_benchmark.py --seeds 0 1 \
        --methods etta lora --budget 5

The same base (the demo's Deformable DETR trained on the source classes,
published by ``make demo``; trained here if absent), the same target data,
iterations (200) and schedule for every method; only what trains differs.
Each (method, seed) is one training run with ``randomness.seed`` set (data
order, tuner init). Reports target-val bbox mAP per seed, mean and spread
(sample standard deviation, min-max), trainable %, mAP per trainable % and
what is stored per task, to
``benchmarks/results/cpu/accuracy_transfer.{md,json}``.

Budget-matched: every method with a size knob (LoRA's rank, an adapter's
or U-Tuner's bottleneck, the prefix count, ETTA's b and l by its rule,
UniPT's width) is sized at run time for ``--budget`` % trainable (default
5) on this d = 128, 2+2-layer model by
:func:`mmpetl.injection.budget.plan_method` (exact counts of the built
model; the specs in ``BUDGET_METHODS``); full fine-tuning, heads only and
BitFit have no knob. The sizes are in the table's "size" column and the run
JSON. A method that cannot be built (a prefix form not implemented yet) is
reported and skipped. PETL methods share one optimiser setting (AdamW, lr
1e-3, tuners at 2x), full fine-tuning keeps its own (lr 2e-4).
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

import run_demo  # noqa: E402  (the demo's base training and runs)

from mmpetl.injection.budget import (  # noqa: E402
    PLANNER_RULE, KnobPlan, PlanError, method_specs, plan_method)

ET_CONFIG = 'et-deformable-detr_mnv2_demo-target.py'
FULL_CONFIG = 'deformable-detr_mnv2_demo-target-full.py'
HEADS_CONFIG = 'deformable-detr_mnv2_demo-target-heads.py'
#: method -> (demo config, planner spec: tuners with knob placeholders, see
#: mmpetl.injection.budget.method_specs; None: the config as is). The
#: knob-methods run on the ET config's detector, sized for --budget.
BUDGET_METHODS = {
    'full-ft': (FULL_CONFIG, None),
    'heads-only': (HEADS_CONFIG, None),
    **{name: (ET_CONFIG, spec) for name, spec in
       method_specs('deformable_detr').items()
       if name not in ('full-ft', 'heads-only')},
}
# The fixed sizes of the first comparison (not budget-matched), kept for
# tools/analysis_tools/prefix_ablation.py's baselines:
# method -> (demo config, overrides of its `model`); None: the config as is
METHODS = {
    'full-ft': ('deformable-detr_mnv2_demo-target-full.py', None),
    'heads-only': ('deformable-detr_mnv2_demo-target-heads.py', None),
    'bitfit': (ET_CONFIG, dict(tuners=[],
                               trainable=['bbox_head', 'bias'])),
    'lora': (ET_CONFIG, dict(tuners=[dict(type='LoRA', presets=['attn', 'ffn'],
                                          rank=16, alpha=16)])),
    'serial-adapter': (ET_CONFIG, dict(tuners=[dict(
        type='SerialAdapter', presets=['ffn'], bottleneck=128)])),
    'adapter': (ET_CONFIG, dict(tuners=[dict(
        type='ParallelAdapter', presets=['ffn'], bottleneck=128)])),
    'prefix': (ET_CONFIG, dict(tuners=[dict(
        type='PrefixTuning', presets=['attn'], num_prefix=32)])),
    'etta': (ET_CONFIG, None),
    'utuning': (ET_CONFIG, dict(tuners=[
        dict(type='UTuner', presets=['attn'], bottleneck=64),
        dict(type='UTuner', presets=['ffn'], bottleneck=64)])),
    'unipt': (ET_CONFIG, dict(tuners=[], parallel=dict(
        type='UniPT', bottleneck=32))),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=list(BUDGET_METHODS),
                   choices=list(BUDGET_METHODS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--budget', type=float, default=5.0,
                   help='trainable %% every method with a size knob is '
                   'sized for (default 5)')
    p.add_argument('--work-dir', default='work_dirs/accuracy_benchmark')
    p.add_argument('--demo-work-dir', default='work_dirs/petl_demo',
                   help='where `make demo` published its base')
    p.add_argument('--data-root', default='data/petl_demo/')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--iters', type=int, help='override the 200 iterations '
                   '(tests only: the table is for the full schedule)')
    p.add_argument('--readme', action='store_true',
                   help='copy the table into benchmarks/README.md between the '
                   '<!-- accuracy:start/end --> markers')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: write the table from the finished '
                   'runs in <work-dir>/runs.json (implies --reuse); runs '
                   'not finished are listed as missing')
    p.add_argument('--reuse', action='store_true',
                   help='reuse finished (method, seed) runs recorded in '
                   '<work-dir>/runs.json (same base, same iterations)')
    return p.parse_args()


def run_one(args, method, seed, base_path, plan=None):
    """One run of ``method``; its ``plan`` (a KnobPlan, None for a method
    run as its config is) gives the model overrides and the size."""
    config = BUDGET_METHODS[method][0]
    run = run_config(args, method, config, plan.args if plan else None,
                     seed, base_path)
    run.update(budget=args.budget, size=plan.size if plan else '–',
               knobs=dict(plan.knobs) if plan else {})
    return run


def plan_methods(args, methods):
    """``(plans, failed)``: a KnobPlan per method with a planner spec
    (sized for ``args.budget`` on the ET config's detector), None for a
    config run as is; ``failed``: method -> why it cannot be built. Plans
    are cached in ``<work-dir>/plans.json`` (keyed by the spec, the model
    config, the heads, the budget and the planner's rule,
    :data:`~mmpetl.injection.budget.PLANNER_RULE`)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', ET_CONFIG))
    model_cfg = cfg.model.model.to_dict()
    heads = list(cfg.model.trainable)
    cache_file = osp.join(args.work_dir, 'plans.json')
    cache = {}
    if osp.exists(cache_file):
        with open(cache_file) as f:
            cache = json.load(f)
    plans, failed = {}, {}
    for method in methods:
        spec = BUDGET_METHODS[method][1]
        if spec is None:
            plans[method] = None
            continue
        key = json.dumps(dict(method=method, spec=spec, model=model_cfg,
                              heads=heads, budget=args.budget,
                              rule=PLANNER_RULE),
                         sort_keys=True, default=str)
        if key in cache:
            plans[method] = KnobPlan.from_dict(cache[key])
            continue
        try:
            plan = plan_method(model_cfg, spec, args.budget, heads, method)
        except PlanError as err:
            failed[method] = str(err)
            print(f'[accuracy] NOT BUILT: {err}', file=sys.stderr,
                  flush=True)
            continue
        plans[method] = plan
        cache[key] = plan.to_dict()
        print(f'[accuracy] {method}: {plan.size}, '
              f'{plan.pct:.2f}% trainable', flush=True)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(cache_file, 'w') as f:
        json.dump(cache, f, indent=1)
    return plans, failed


def run_config(args, name, config, overrides, seed, base_path,
               options=None, health_interval=None):
    """One training run of demo ``config`` with ``model`` overrides (and
    other config ``options``); ``health_interval`` makes the
    TunerHealthHook record every that many iterations."""
    options = dict(options or {}, load_from=base_path,
                   randomness=dict(seed=seed))
    if overrides:
        for key, value in overrides.items():
            options[f'model.{key}'] = value
    if args.iters:
        options.update({'train_cfg.max_iters': args.iters,
                        'train_cfg.val_interval': args.iters,
                        'default_hooks.checkpoint.interval': args.iters})
    work_dir = osp.join(args.work_dir, f'{name}_seed{seed}')
    cfg = run_demo.demo_config(config, work_dir, args.data_root, **options)
    if health_interval:
        for hook in cfg.get('custom_hooks', []):
            if hook['type'] == 'mmpetl.TunerHealthHook':
                hook['interval'] = health_interval
    runner, metrics, seconds = run_demo.train_run(cfg)
    trainable, total, stored, size = run_demo.stored_per_task(runner,
                                                              work_dir)
    return dict(method=name, seed=seed, config=f'configs/demo/{config}',
                overrides=overrides, options=options, trainable=trainable,
                total=total, trainable_pct=100.0 * trainable / total,
                stored=stored, checkpoint_mib=size,
                bbox_mAP=float(metrics.get('coco/bbox_mAP', float('nan'))),
                bbox_AP50=float(metrics.get('coco/bbox_mAP_50',
                                            float('nan'))),
                iters=runner.iter, minutes=seconds / 60,
                work_dir=work_dir)


def summarize(runs):
    """One row per method: mean, spread and per-seed mAP."""
    from mmpetl.analysis.report import seed_summary
    return seed_summary(runs, 'bbox_mAP', lambda mine: dict(
        ap50=statistics.mean(r['bbox_AP50'] for r in mine),
        size=mine[0].get('size', '–'),
        map_per_pct=statistics.mean(r['bbox_mAP'] for r in mine) /
        mine[0]['trainable_pct'],
        trainable_pct=mine[0]['trainable_pct'],
        trainable=mine[0]['trainable'], stored=mine[0]['stored'],
        checkpoint_mib=mine[0]['checkpoint_mib'],
        minutes=statistics.mean(r['minutes'] for r in mine)))


def markdown(rows, header):
    lines = [
        '# mmpetl accuracy benchmark: demo source -> target transfer', '',
        f"- date: {header['date']}", f"- machine: {header['machine']}",
        f"- command: `{header['command']}`",
        f"- base: {header['base']}",
        f"- setting: {header['setting']}",
        f"- budget: {header.get('budget', '–')}",
        f"- seeds: {header['seeds']} (mean, sample std and min-max over "
        f'them; mAP = COCO bbox mAP on target val, 150 images)',
        '- wall minutes are as measured, other jobs included: they are not '
        'a speed comparison (that is '
        'tools/analysis_tools/petl_benchmark.py)', '',
        '| method | size | trainable | trainable % | stored per task | '
        'mAP mean | std | min-max | Δ vs full FT | mAP per trainable % | '
        'AP50 | per seed | wall min/run |',
        '|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|']
    for r in rows:
        delta = '–' if r['delta_vs_full'] is None else \
            f"{100 * r['delta_vs_full']:+.1f} pt"
        lines.append(
            f"| {r['method']} | {r.get('size', '–')} | {r['trainable']:,} | "
            f"{r['trainable_pct']:.2f}% | {r['stored']} "
            f"{r['checkpoint_mib']:.2f} MiB | {r['mean']:.3f} | "
            f"{r['std']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {delta} | "
            f"{r['map_per_pct']:.4f} | {r['ap50']:.3f} | "
            f"{', '.join(f'{m:.3f}' for m in r['values'])} | "
            f"{r['minutes']:.1f} |")
    return '\n'.join(lines) + '\n'


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    run_demo.make_transfer_dataset(args.data_root)
    demo_args = argparse.Namespace(work_dir=args.demo_work_dir,
                                   data_root=args.data_root, reuse_base=True)
    base_path, _ = run_demo.train_base(demo_args)
    plans, failed = plan_methods(args, args.methods)
    methods = [m for m in args.methods if m not in failed]
    sizes = {m: plans[m].size if plans[m] else '–' for m in methods}
    runs_file = osp.join(args.work_dir, 'runs.json')
    done = {}
    if (args.reuse or args.report_only) and osp.exists(runs_file):
        with open(runs_file) as f:
            done = reusable(json.load(f), osp.basename(base_path),
                            args.iters, args.budget, sizes)
    runs, missing = [], []
    for seed in args.seeds:  # seeds outermost: a partial run is balanced
        for method in methods:
            if args.report_only and (method, seed) not in done:
                missing.append(f'{method} seed {seed}')
                continue
            if (method, seed) in done:
                print(f'[accuracy] {method} seed {seed}: reusing the '
                      f'finished run in {runs_file}', flush=True)
                runs.append(done[(method, seed)])
                continue
            print(f'[accuracy] {method} seed {seed} ...', flush=True)
            run = run_one(args, method, seed, base_path, plans[method])
            run.update(base=osp.basename(base_path), iters_asked=args.iters)
            print(f"[accuracy]   mAP {run['bbox_mAP']:.3f} "
                  f"({run['minutes']:.1f} min)", flush=True)
            runs.append(run)
            write_runs(runs_file, runs)
    if not runs:
        raise SystemExit('[accuracy] no finished run to report' + (
            f' (not built: {", ".join(failed)})' if failed else ''))
    rows = summarize(runs)
    from petl_benchmark import machine_description  # analysis_tools/
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'),
        command='python tools/analysis_tools/accuracy_benchmark.py ' +
        ' '.join(sys.argv[1:]),
        base=f'{osp.basename(base_path)} (published by `make demo`)',
        setting=f'{runs[0]["iters"]} iterations per run, batch 8, 160 px, '
        f'CPU; {sum(r["minutes"] for r in runs):.0f} min of training and '
        f'evaluation in all',
        seeds=' '.join(map(str, args.seeds)) + (
            f'; not run: {", ".join(missing)}' if missing else ''),
        budget=f'{args.budget:g}% trainable: every method with a size knob '
        'sized for it by mmpetl.injection.budget.plan_method (exact counts)' +
        (''.join(f'; not built: {m} ({why})' for m, why in failed.items())),
        sizes={m: (plans[m].to_dict() if plans[m] else None)
               for m in methods})
    text = markdown(rows, header)
    print(text)
    with open(osp.join(args.out_dir, 'accuracy_transfer.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out_dir, 'accuracy_transfer.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows, runs=runs), f, indent=1)
    if args.readme:
        write_readme(text)


def reusable(recorded, base, iters, budget, sizes):
    """``{(method, seed): run}`` of the ``recorded`` runs that may stand for
    this session's: same base, iterations, budget and size (another budget
    sizes the methods differently; ``sizes``: method -> its size now)."""
    return {(r['method'], r['seed']): r for r in recorded
            if r.get('base') == base and r.get('iters_asked') == iters and
            r.get('budget') == budget and
            r['method'] in sizes and r.get('size') == sizes[r['method']]}


def write_runs(runs_file, runs):
    """Finished runs survive a stop: this session's and, from the file,
    every other one (other methods, budgets, bases) kept as it was."""
    kept = []
    if osp.exists(runs_file):
        with open(runs_file) as f:
            kept = json.load(f)
    mine = {(r['method'], r['seed'], r.get('budget'), r.get('size'),
             r.get('base'), r.get('iters_asked')) for r in runs}
    kept = [r for r in kept if (r['method'], r['seed'], r.get('budget'),
                                r.get('size'), r.get('base'),
                                r.get('iters_asked')) not in mine]
    os.makedirs(osp.dirname(runs_file) or '.', exist_ok=True)
    with open(runs_file, 'w') as f:
        json.dump(runs + kept, f, indent=1)


def write_readme(text):
    from mmpetl.analysis.report import write_benchmark_section
    write_benchmark_section(ROOT, 'accuracy',
                          text.split('\n', 2)[2])  # without the page title


if __name__ == '__main__':
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    main()
