"""ViT top-1 of every method on a classification transfer, offline.

    python tools/analysis_tools/vit_accuracy_benchmark.py  # seeds 0 1 2
    python tools/analysis_tools/vit_accuracy_benchmark.py \
        --methods etta lora vpt-deep

No pretrained ViT can be downloaded here, so the base is made the way a
model zoo makes one, at a size a 2-core CPU trains in a minute: an
MMPretrain ``VisionTransformer`` (d=96, 4 layers, 4 heads, patch 4 on 28 px)
trained from scratch on Fashion-MNIST's classes 0-4 (the 1,500-image subset
bundled with mmpetl). Each method then starts from that base, gets a new
5-way head and trains on classes 5-9 (1,500 images) for the same
iterations, batch and data order; top-1 on their 500 test images.

Budget-matched: every method with a size knob (LoRA's rank, an adapter's
or U-Tuner's bottleneck, the prefix count, ETTA's b and l by its rule,
UniPT's width, VPT's prompts) is sized at run time for ``--budget`` %
trainable (default 5) on this model by
:func:`mmpetl.injection.budget.plan_method` (exact counts of the built
model; specs in ``BUDGET_METHODS``); full fine-tuning, heads only and BitFit
have no knob. The table has each method's size and top-1 per trainable %.
A method that cannot be built (a prefix form not implemented yet) is
reported and skipped.

The models are ``mmpetl.PETLModel`` built from the same tuner configs the
detection benchmarks use, optimised through
``PETLOptimWrapperConstructor`` (only trainable parameters in AdamW) with
``model.train_step`` - the Runner's own step - in a plain loop, which keeps
a run to seconds. Writes ``benchmarks/results/cpu/vit_accuracy_transfer.{md,
json}`` (and, with ``--readme``, the table in benchmarks/README.md between
the ``<!-- vit-accuracy:start/end -->`` markers).
"""
import argparse
import copy
import datetime
import json
import os
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmpetl  # noqa: E402,F401

from mmpetl.injection.budget import (PlanError, method_specs,  # noqa: E402
                                     plan_method)

ASSET = osp.join(ROOT, 'mmpetl', 'demo', 'assets', 'fashion_mnist_subset.npz')
DIMS = 96
HEADS = ['head']
#: method -> planner spec (tuners with knob placeholders, see
#: mmpetl.injection.budget.method_specs; None: full fine-tuning), sized
#: for --budget on the d=96 ViT at run time
BUDGET_METHODS = method_specs('vit')
# The fixed sizes of the first comparison (not budget-matched), kept for
# tools/analysis_tools/prefix_ablation.py's baselines:
# method -> PETLModel arguments on top of the base (None: full fine-tuning)
METHODS = {
    'full-ft': None,
    'heads-only': dict(tuners=[]),
    'bitfit': dict(tuners=[], trainable=['head', 'bias']),
    'lora': dict(tuners=[dict(type='LoRA', presets=['attn', 'ffn'], rank=8,
                              alpha=8)]),
    'serial-adapter': dict(tuners=[dict(type='SerialAdapter',
                                        presets=['ffn'], bottleneck=48)]),
    'adapter': dict(tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                                 bottleneck=48)]),
    'prefix': dict(tuners=[dict(type='PrefixTuning', presets=['attn'],
                                num_prefix=16)]),
    'etta': dict(tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                              bottleneck=48),
                         dict(type='ScaledPrefix', presets=['attn'],
                              num_prefix=16)]),
    'utuning': dict(tuners=[dict(type='UTuner', presets=['attn'],
                                 bottleneck=24),
                            dict(type='UTuner', presets=['ffn'],
                                 bottleneck=24)]),
    'unipt': dict(tuners=[], parallel=dict(type='UniPT', bottleneck=24)),
    'vpt-shallow': dict(tuners=[dict(type='VPT', presets=['backbone'],
                                     num_prompts=10, deep=False)]),
    'vpt-deep': dict(tuners=[dict(type='VPT', presets=['backbone'],
                                  num_prompts=10, deep=True)]),
}


def vit_cfg(num_classes: int = 5) -> dict:
    """The small ViT: MMPretrain's ViT-B/16 config with its sizes shrunk."""
    from mmengine.hub import get_config
    model = get_config('mmpretrain::_base_/models/vit-base-p16.py').model
    model.backbone.update(
        arch=dict(embed_dims=DIMS, num_layers=4, num_heads=4,
                  feedforward_channels=4 * DIMS),
        img_size=28, patch_size=4, in_channels=1, drop_rate=0.0,
        init_cfg=None)
    model.head.update(in_channels=DIMS, num_classes=num_classes)
    model.head.loss = dict(type='CrossEntropyLoss')  # replaces label smoothing
    # Fashion-MNIST's mean/std, grey images
    model.data_preprocessor = dict(type='ClsDataPreprocessor',
                                   num_classes=num_classes, mean=[72.9],
                                   std=[90.0], to_rgb=False)
    return model.to_dict()


def load_split(classes):
    """(train images, train labels, test images, test labels) of
    ``classes``, labels renumbered 0..len-1; images uint8 (N, 1, 28, 28)."""
    data = np.load(ASSET)
    out = []
    for split in ('train', 'test'):
        images, labels = data[f'{split}_images'], data[f'{split}_labels']
        keep = np.isin(labels, classes)
        remap = {c: i for i, c in enumerate(classes)}
        out += [torch.from_numpy(images[keep][:, None].copy()),
                torch.tensor([remap[int(c)] for c in labels[keep]])]
    return out


def batches(num, batch, iters, seed):
    """Index batches: reshuffled every epoch, fixed by the seed."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(iters):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(num, generator=gen)])
        yield order[:batch]
        order = order[batch:]


def as_data(images, labels, index):
    from mmpretrain.structures import DataSample
    return dict(inputs=[images[i] for i in index],
                data_samples=[DataSample().set_gt_label(int(labels[i]))
                              for i in index])


def build_optim(model, lr, petl, paramwise_cfg=None):
    from mmengine.optim import build_optim_wrapper
    cfg = dict(type='OptimWrapper',
               optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01),
               clip_grad=dict(max_norm=1.0))
    if petl:
        cfg['constructor'] = 'mmpetl.PETLOptimWrapperConstructor'
        cfg['paramwise_cfg'] = dict(paramwise_cfg or {})
    return build_optim_wrapper(model, cfg)


def train(model, optim, images, labels, iters, batch, seed, probe=None,
          probe_every=10):
    """``model.train_step`` over seeded batches; with a ``TunerProbe``,
    its statistics every ``probe_every`` iterations (and the first) as
    ``[(iteration, per-type stats)]``. Returns (mean of the last 20
    losses, trajectory)."""
    model.train()
    last, trajectory = [], []
    for step, index in enumerate(batches(len(labels), batch, iters, seed),
                                 1):
        due = probe is not None and (step == 1 or step % probe_every == 0)
        if due:
            probe.start()
        log = model.train_step(as_data(images, labels, index), optim)
        if due:
            per_type = probe.finish()[1]
            trajectory.append((step, {k: {s: sum(v) / len(v)
                                          for s, v in stats.items()}
                                      for k, stats in per_type.items()}))
        last.append(float(log['loss'].detach()))  # log_vars keep the graph
    return statistics.mean(last[-20:]), trajectory


@torch.no_grad()
def top1(model, images, labels, batch=250):
    model.eval()
    hits = 0
    for start in range(0, len(labels), batch):
        index = range(start, min(start + batch, len(labels)))
        data = model.data_preprocessor(as_data(images, labels, index))
        logits = model(data['inputs'], mode='tensor')
        hits += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return hits / len(labels)


def train_base(args):
    """The source model (classes 0-4), trained once and cached."""
    from mmpetl.models import build_inner_model
    path = osp.join(args.work_dir, f'vit_source_{args.base_iters}.pth')
    model = build_inner_model(vit_cfg(), 'mmpretrain')
    images, labels, test_images, test_labels = load_split([0, 1, 2, 3, 4])
    if osp.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.state_dict(), path, top1(model, test_images, test_labels)
    torch.manual_seed(0)
    model = build_inner_model(vit_cfg(), 'mmpretrain')
    model.init_weights()
    train(model, build_optim(model, 1e-3, petl=False), images, labels,
          args.base_iters, args.batch, seed=1000)
    os.makedirs(args.work_dir, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict(), path, top1(model, test_images, test_labels)


def run_one(args, method, seed, base_state, target, plan=None):
    """One run of ``method`` at its ``plan`` (a KnobPlan; None: plan
    it here for ``args.budget``)."""
    plan = plan or plan_method(vit_cfg(), BUDGET_METHODS[method],
                               args.budget, HEADS, method)
    run = run_spec(args, method, plan.args, seed, base_state, target)
    run.update(budget=args.budget, size=plan.size, knobs=dict(plan.knobs))
    return run


def plan_methods(args, methods):
    """``(plans, failed)``: a KnobPlan per method sized for
    ``args.budget``; ``failed``: method -> why it cannot be built."""
    plans, failed = {}, {}
    for method in methods:
        try:
            plans[method] = plan = plan_method(
                vit_cfg(), BUDGET_METHODS[method], args.budget, HEADS,
                method)
        except PlanError as err:
            failed[method] = str(err)
            print(f'[vit] NOT BUILT: {err}', file=sys.stderr, flush=True)
            continue
        print(f'[vit] {method}: {plan.size}, {plan.pct:.2f}% trainable',
              flush=True)
    return plans, failed


def run_spec(args, name, spec, seed, base_state, target,
             paramwise_cfg=None, probe_every=None):
    """One run: ``spec`` holds PETLModel arguments (None: full
    fine-tuning); ``probe_every`` records tuner statistics on the way."""
    from mmpetl.models import (PETLModel, build_inner_model,
                               init_prefixes_from_activations)
    from mmpetl.models.health import TunerProbe
    images, labels, test_images, test_labels = target
    torch.manual_seed(seed)
    if spec is None:
        model = build_inner_model(vit_cfg(), 'mmpretrain')
        model.init_weights()  # the new head's init
    else:
        spec = copy.deepcopy(spec)
        spec.setdefault('trainable', ['head'])
        model = PETLModel(model=vit_cfg(), **spec)
    state = {k: v for k, v in base_state.items() if not k.startswith('head')}
    result = model.load_state_dict(state, strict=False)
    # only the new head is not from the base (tuner keys are not reported)
    assert not result.unexpected_keys and all(
        k.startswith('head.') for k in result.missing_keys), result
    # init='activations': two training batches of the frozen model, as
    # the Runner's TunerInitHook does (its own seeded order)
    init_prefixes_from_activations(model, [
        as_data(images, labels, index)
        for index in batches(len(labels), args.batch, 2, seed + 10**6)])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = args.full_lr if spec is None else args.petl_lr
    start = time.time()
    probe = TunerProbe(model) if probe_every and spec is not None else None
    loss, trajectory = train(
        model, build_optim(model, lr, spec is not None, paramwise_cfg),
        images, labels, args.iters, args.batch, seed, probe,
        probe_every or 10)
    return dict(method=name, seed=seed, trainable=trainable, total=total,
                trainable_pct=100.0 * trainable / total, final_loss=loss,
                top1=top1(model, test_images, test_labels),
                seconds=time.time() - start, trajectory=trajectory)


def summarize(runs):
    """One row per method: mean, spread and per-seed top-1."""
    from mmpetl.analysis.report import seed_summary
    return seed_summary(runs, 'top1', lambda mine: dict(
        size=mine[0].get('size', '–'),
        top1_per_pct=statistics.mean(r['top1'] for r in mine) /
        mine[0]['trainable_pct'],
        trainable=mine[0]['trainable'],
        trainable_pct=mine[0]['trainable_pct'],
        seconds=statistics.mean(r['seconds'] for r in mine)))


def markdown(rows, header):
    lines = [
        '# mmpetl ViT accuracy benchmark: Fashion-MNIST 0-4 -> 5-9', '',
        f"- date: {header['date']}", f"- machine: {header['machine']}",
        f"- command: `{header['command']}`", f"- base: {header['base']}",
        f"- setting: {header['setting']}",
        f"- budget: {header.get('budget', '–')}",
        f"- seeds: {header['seeds']} (mean, sample std and min-max over "
        'them; top-1 on the 500 target test images)', '',
        '| method | size | trainable | trainable % | top-1 mean | std | '
        'min-max | Δ vs full FT | top-1 per trainable % | per seed | s/run |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|']
    for r in rows:
        delta = '–' if r['delta_vs_full'] is None else \
            f"{100 * r['delta_vs_full']:+.1f} pt"
        lines.append(
            f"| {r['method']} | {r.get('size', '–')} | {r['trainable']:,} | "
            f"{r['trainable_pct']:.2f}% | {r['mean']:.3f} | {r['std']:.3f} | "
            f"{r['min']:.3f}–{r['max']:.3f} | {delta} | "
            f"{r['top1_per_pct']:.4f} | "
            f"{', '.join(f'{a:.3f}' for a in r['values'])} | "
            f"{r['seconds']:.0f} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=list(BUDGET_METHODS),
                   choices=list(BUDGET_METHODS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--budget', type=float, default=5.0,
                   help='trainable %% every method with a size knob is '
                   'sized for (default 5)')
    p.add_argument('--iters', type=int, default=250)
    p.add_argument('--base-iters', type=int, default=800)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--petl-lr', type=float, default=2e-3)
    p.add_argument('--full-lr', type=float, default=5e-4)
    p.add_argument('--work-dir', default='work_dirs/vit_accuracy_benchmark')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--readme', action='store_true',
                   help='copy the table into benchmarks/README.md')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    start = time.time()
    base_state, base_path, base_top1 = train_base(args)
    print(f'[vit] base {base_path}: source top-1 {base_top1:.3f}',
          flush=True)
    target = load_split([5, 6, 7, 8, 9])
    plans, failed = plan_methods(args, args.methods)
    runs = []
    for seed in args.seeds:
        for method in (m for m in args.methods if m in plans):
            run = run_one(args, method, seed, base_state, target,
                          plans[method])
            print(f"[vit] {method} seed {seed}: top-1 {run['top1']:.3f} "
                  f"({run['trainable_pct']:.2f}% trainable, "
                  f"{run['seconds']:.0f} s)", flush=True)
            runs.append(run)
    if not runs:
        raise SystemExit(f'[vit] nothing ran (not built: {list(failed)})')
    rows = summarize(runs)
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from petl_benchmark import machine_description
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'),
        command='python tools/analysis_tools/vit_accuracy_benchmark.py ' +
        ' '.join(argv if argv is not None else sys.argv[1:]),
        base=f'ViT d={DIMS}, 4 layers, patch 4, trained {args.base_iters} '
        f'iterations on classes 0-4: source top-1 {base_top1:.3f}',
        setting=f'{args.iters} iterations, batch {args.batch}, AdamW (PETL '
        f'lr {args.petl_lr}, full FT lr {args.full_lr}), new 5-way head; '
        f'total {(time.time() - start) / 60:.1f} min',
        seeds=' '.join(map(str, args.seeds)),
        budget=f'{args.budget:g}% trainable: every method with a size knob '
        'sized for it by mmpetl.injection.budget.plan_method (exact counts)' +
        ''.join(f'; not built: {m} ({why})' for m, why in failed.items()),
        sizes={m: p.to_dict() for m, p in plans.items()})
    text = markdown(rows, header)
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'vit_accuracy_transfer.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out_dir, 'vit_accuracy_transfer.json'),
              'w') as f:
        json.dump(dict(header=header, rows=rows, runs=runs), f, indent=1)
    if args.readme:
        from mmpetl.analysis.report import write_benchmark_section
        write_benchmark_section(ROOT, 'vit-accuracy',
                              text.split('\n', 2)[2])


if __name__ == '__main__':
    main()
