"""Plan ETTA allocations (adapter bottleneck b, prefix length l) for budgets.

    python tools/misc/plan_budget.py configs/et_deformable_detr_coco.py \
        --targets 2 5 10 [--verify]

ETTA's rule: as much of the budget as possible to the FFN adapters, the
least that works to the prefixes. Counts are exact (real module widths);
--verify builds each allocation and counts its parameters. Where the
adapters and prefixes go is read from the config's ``ParallelAdapter`` and
``ScaledPrefix`` entries (their ``presets``; e.g. ET-DINO Swin-L also tunes
the backbone), else ``['ffn']`` and ``['attn']``.
"""
import argparse

from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpetl  # noqa: F401
from mmpetl.injection import format_table
from mmpetl.injection.budget import plan
from mmpetl.models import PETLModel, build_inner_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--targets', nargs='+', type=float,
                        default=[1, 2, 5, 10])
    parser.add_argument('--trainable', nargs='*', help='default: the '
                        "config's model.trainable, else ['bbox_head']")
    parser.add_argument('--verify', action='store_true')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = cfg.model.get('model', cfg.model)
    trainable = args.trainable if args.trainable is not None else list(
        cfg.model.get('trainable', ['bbox_head']))
    presets = {t['type'].split('.')[-1]: list(t['presets'])
               for t in cfg.model.get('tuners', []) if 'presets' in t}
    ffn = presets.get('ParallelAdapter', ['ffn'])
    attn = presets.get('ScaledPrefix', ['attn'])
    model = build_inner_model(model_cfg)
    rows = []
    for a in plan(model, args.targets, trainable, ffn_presets=ffn,
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


if __name__ == '__main__':
    main()
