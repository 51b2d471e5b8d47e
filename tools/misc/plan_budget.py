"""Size PETL methods for trainable-parameter budgets.

    # every method at 5%: its knob and the exact trainable %
    python tools/misc/plan_budget.py \
        configs/demo/et-deformable-detr_mnv2_demo-target.py \
        --methods lora adapter etta prefix --targets 5
    python tools/misc/plan_budget.py \
        configs/et-deformable-detr_r50_16xb2-50e_coco.py --methods all

    # ETTA's allocations (adapter bottleneck b, prefix length l) only
    python tools/misc/plan_budget.py configs/et_deformable_detr_coco.py \
        --targets 2 5 10 [--verify]

With ``--methods``, each method of
:func:`mmpetl.injection.budget.method_specs` (for the config's
architecture) gets the value of its one knob (LoRA rank ``r``, adapter /
U-Tuner / UniPT bottleneck ``b``, prefix count ``l``, VPT prompts ``p``;
ETTA ``b`` and ``l`` by its rule) whose trainable % is closest to each
target. The % are counted on the built ``PETLModel`` (every tuner and
prefix form counted as it is built), not by formula; full fine-tuning,
heads only and BitFit have no knob and are reported as they are. A method
that cannot be built (e.g. a prefix form not implemented) is reported with
its error and the others still planned (exit status 1).

Without ``--methods``: ETTA's rule by formula (as much of the budget as
possible to the FFN adapters, the least that works to the prefixes);
``--verify`` builds each allocation and counts its parameters. Where the
adapters and prefixes go is read from the config's ``ParallelAdapter`` and
``ScaledPrefix`` entries (their ``presets``; e.g. ET-DINO Swin-L also tunes
the backbone), else ``['ffn']`` and ``['attn']``.
"""
import argparse
import sys

from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpetl  # noqa: F401
from mmpetl.injection import detect_arch, format_table
from mmpetl.injection.budget import (PlanError, method_specs,
                                     plan, plan_method, without_pretrained)
from mmpetl.models import PETLModel, build_inner_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--targets', nargs='+', type=float,
                        help='trainable %% to plan for (default: 1 2 5 10; '
                        'with --methods: 5)')
    parser.add_argument('--methods', nargs='+', metavar='METHOD',
                        help="methods to size ('all': every method of the "
                        "architecture); without it, ETTA's (b, l) table")
    parser.add_argument('--trainable', nargs='*', help='base parts every '
                        "method trains (the heads); default: the config's "
                        "model.trainable, else ['bbox_head']")
    parser.add_argument('--verify', action='store_true',
                        help="ETTA table: build each allocation and count")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = cfg.model.get('model', cfg.model)
    if hasattr(model_cfg, 'to_dict'):
        model_cfg = model_cfg.to_dict()
    model_cfg = without_pretrained(model_cfg)  # counts need no weights
    trainable = args.trainable if args.trainable is not None else list(
        cfg.model.get('trainable', ['bbox_head']))
    model = build_inner_model(model_cfg)
    if args.methods:
        return plan_methods(args, model_cfg, trainable, detect_arch(model))
    targets = args.targets or [1, 2, 5, 10]
    presets = {t['type'].split('.')[-1]: list(t['presets'])
               for t in cfg.model.get('tuners', []) if 'presets' in t}
    ffn = presets.get('ParallelAdapter', ['ffn'])
    attn = presets.get('ScaledPrefix', ['attn'])
    rows = []
    for a in plan(model, targets, trainable, ffn_presets=ffn,
                  attn_presets=attn):
        row = [f'{a.target_pct:g}%', a.bottleneck, a.num_prefix,
               f'{a.adapter_params:,}', f'{a.prefix_params:,}',
               f'{a.head_params:,}', f'{a.trainable:,}', f'{a.pct:.2f}%']
        if args.verify:
            petl = PETLModel(
                model=model_cfg, trainable=trainable, tuners=[
                    dict(type='ParallelAdapter', presets=ffn,
                         bottleneck=a.bottleneck),
                    dict(type='ScaledPrefix', presets=attn,
                         num_prefix=a.num_prefix)])
            built = sum(p.numel() for p in petl.parameters()
                        if p.requires_grad)
            row.append('yes' if built == a.trainable else f'NO ({built:,})')
        rows.append(row)
    header = ['target', 'b', 'l', 'adapters', 'prefixes', 'trainable base',
              'trainable', '% of total']
    print(f'adapters: presets {ffn}; prefixes: presets {attn}')
    print(format_table(header + (['verified'] if args.verify else []), rows))
    return 0


def plan_methods(args, model_cfg, trainable, arch) -> int:
    """One row per (method, target): the knob and the exact %."""
    specs = method_specs(arch)
    names = list(specs) if args.methods == ['all'] else args.methods
    unknown = [m for m in names if m not in specs]
    if unknown:
        raise SystemExit(f'plan_budget: unknown methods {unknown} for a '
                         f'{arch!r} model; choose from {list(specs)} or '
                         f"'all'")
    targets = args.targets or [5]
    rows, failed = [], []
    for name in names:
        for target in targets:
            try:
                p = plan_method(model_cfg, specs[name], target, trainable,
                                method=name)
            except PlanError as err:
                failed.append(str(err))
                rows.append([name, f'{target:g}%', 'NOT BUILT', '', '', ''])
                break
            fixed = not p.knobs
            rows.append([name, f'{target:g}%', p.size, f'{p.trainable:,}',
                         f'{p.pct:.3f}%', 'no knob' if fixed else
                         _bracket_text(p)])
    print(f'{arch}; heads (trainable in every method): {trainable}')
    print(format_table(['method', 'target', 'knob', 'trainable',
                        '% of total', 'neighbours'], rows))
    for message in failed:
        print(f'NOT BUILT: {message}', file=sys.stderr)
    return 1 if failed else 0


def _bracket_text(p) -> str:
    if p.bracket is None:
        return p.note
    lo, p_lo, hi, p_hi = p.bracket
    return f'{lo}: {p_lo:.3f}%, {hi}: {p_hi:.3f}%'


if __name__ == '__main__':
    sys.exit(main())
