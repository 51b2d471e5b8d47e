"""Where a tuning budget pays: the same LoRA budget on different linears,
beside the per-token tuners, on the accuracy transfers.

    python tools/analysis_tools/placement_ablation.py --model vit
    python tools/analysis_tools/placement_ablation.py --model detector

Same bases, data, schedules and ~5 % budget as ``vit_accuracy_benchmark.py``
(``--model vit``) and ``accuracy_benchmark.py`` (``--model detector``, the
demo's Deformable DETR), each placement sized by
:func:`mmpetl.injection.budget.plan_method`, seeds 0 1 2.

* ViT: the attention split at the token mixing. ``qkv`` acts before it (a
  change of the queries, keys and values changes which tokens are mixed
  and what); ``proj``, the FFN and the parallel adapter act on each token
  after it.
* Deformable DETR: multi-scale deformable attention split into where and
  how much it samples (``sampling_offsets`` and ``attention_weights``)
  and what it reads there (``value_proj`` and ``output_proj``), beside the
  FFN.

Writes ``benchmarks/results/cpu/{vit,det}_placement_ablation.{md,json}``.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import accuracy_benchmark as det  # noqa: E402
import vit_accuracy_benchmark as vit  # noqa: E402

from mmpetl.injection.budget import plan_method  # noqa: E402


def _lora(**select):
    return dict(tuners=[dict(type='LoRA', rank='{r}', alpha='{r}',
                             **select)])


_MSDA = r'(encoder\.layers\.\d+\.self_attn|decoder\.layers\.\d+\.cross_attn)'
#: model -> placement -> planner spec (knob placeholders as in
#: mmpetl.injection.budget.method_specs)
PLACEMENTS = {
    'vit': {
        'lora-attn+ffn': _lora(presets=['attn', 'ffn']),
        'lora-attn': _lora(presets=['attn']),
        'lora-qkv': _lora(targets=r'backbone\.layers\.\d+\.attn\.qkv'),
        'lora-proj': _lora(targets=r'backbone\.layers\.\d+\.attn\.proj'),
        'lora-ffn': _lora(presets=['ffn']),
        'adapter-ffn': dict(tuners=[dict(type='ParallelAdapter',
                                         presets=['ffn'],
                                         bottleneck='{b}')]),
    },
    'detector': {
        'lora-msda-sampling': _lora(
            targets=_MSDA + r'\.(sampling_offsets|attention_weights)'),
        'lora-msda-values': _lora(
            targets=_MSDA + r'\.(value_proj|output_proj)'),
        'lora-ffn': _lora(presets=['ffn']),
    },
}
PREFIX = dict(vit='vit', detector='det')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', choices=list(PLACEMENTS), default='vit')
    p.add_argument('--placements', nargs='+',
                   help='default: every placement of --model')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--budget', type=float, default=5.0)
    p.add_argument('--iters', type=int,
                   help='override the benchmark\'s schedule (tests only)')
    p.add_argument('--base-iters', type=int, default=800,
                   help='ViT: iterations of the source model')
    p.add_argument('--batch', type=int, default=32, help='ViT batch')
    p.add_argument('--work-dir',
                   help='default: the benchmark\'s own (its base is reused)')
    p.add_argument('--demo-work-dir', default='work_dirs/petl_demo')
    p.add_argument('--data-root', default='data/petl_demo/')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    args = p.parse_args(argv)
    known = PLACEMENTS[args.model]
    args.placements = args.placements or list(known)
    unknown = [n for n in args.placements if n not in known]
    if unknown:
        p.error(f'--model {args.model} has no placement {unknown}; '
                f'choose from {list(known)}')
    return args


def _runs(args, model_cfg, heads, metric, run_fn):
    """Every (seed, placement) run, seeds outermost; each placement sized
    for ``args.budget`` on ``model_cfg`` and run by ``run_fn(name, plan,
    seed)``."""
    plans = {name: plan_method(model_cfg, PLACEMENTS[args.model][name],
                               args.budget, heads, name)
             for name in args.placements}
    runs = []
    for seed in args.seeds:
        for name, plan in plans.items():
            run = run_fn(name, plan, seed)
            run.update(budget=args.budget, size=plan.size)
            print(f'[placement] {name} seed {seed}: {metric} '
                  f'{run[metric]:.3f} ({plan.size})', flush=True)
            runs.append(run)
    return runs


def _vit_runs(args):
    bench = vit.parse_args([
        '--iters', str(args.iters or 250), '--base-iters',
        str(args.base_iters), '--batch', str(args.batch), '--work-dir',
        args.work_dir or 'work_dirs/vit_accuracy_benchmark'])
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    base_state, base_path, base_top1 = vit.train_base(bench)
    target = vit.load_split([5, 6, 7, 8, 9])
    runs = _runs(args, vit.vit_cfg(), vit.HEADS, 'top1',
                 lambda name, plan, seed: vit.run_spec(
                     bench, name, plan.args, seed, base_state, target))
    info = dict(base=f'{osp.basename(base_path)}: source top-1 '
                f'{base_top1:.3f} (the ViT accuracy benchmark\'s base)',
                setting=f'{bench.iters} iterations, batch {bench.batch}, '
                f'AdamW lr {bench.petl_lr}, new 5-way head')
    return runs, info


def _det_runs(args):
    from mmengine.config import Config
    ns = argparse.Namespace(
        work_dir=args.work_dir or 'work_dirs/accuracy_benchmark',
        data_root=args.data_root, iters=args.iters)
    det.run_demo.make_transfer_dataset(args.data_root)
    base_path, _ = det.run_demo.train_base(argparse.Namespace(
        work_dir=args.demo_work_dir, data_root=args.data_root,
        reuse_base=True))
    cfg = Config.fromfile(osp.join(det.ROOT, 'configs', 'demo',
                                   det.ET_CONFIG))
    model_cfg, heads = cfg.model.model.to_dict(), list(cfg.model.trainable)
    runs = _runs(args, model_cfg, heads, 'bbox_mAP',
                 lambda name, plan, seed: det.run_config(
                     ns, name, det.ET_CONFIG, plan.args, seed, base_path))
    info = dict(base=f'{osp.basename(base_path)} (published by `make '
                f'demo`; the accuracy benchmark\'s base)',
                setting=f'{runs[0]["iters"]} iterations per run, batch 8, '
                '160 px, CPU')
    return runs, info


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    bench = vit if args.model == 'vit' else det  # its table's format
    runs, info = (_vit_runs if args.model == 'vit' else _det_runs)(args)
    from petl_benchmark import machine_description
    header = dict(
        info, date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'),
        command='python tools/analysis_tools/placement_ablation.py ' +
        ' '.join(argv if argv is not None else sys.argv[1:]),
        seeds=' '.join(map(str, args.seeds)),
        budget=f'{args.budget:g}% trainable, each placement sized by '
        f'plan_method; {(time.time() - start) / 60:.1f} min in all')
    rest = bench.markdown(bench.summarize(runs), header).split('\n', 1)[1]
    text = (f'# mmpetl placement ablation ({args.model}): the same budget '
            f'on different linears\n' + rest)
    print(text)
    name = f'{PREFIX[args.model]}_placement_ablation'
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, name + '.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out_dir, name + '.json'), 'w') as f:
        json.dump(dict(header=header, runs=runs), f, indent=1)


if __name__ == '__main__':
    main()
