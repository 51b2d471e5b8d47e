"""Base + LoRA tuner checkpoint -> a plain MMDetection/MMPretrain checkpoint.

    python tools/model_converters/export_merged.py CONFIG BASE.pth TUNER.pth \
        OUT.pth [--force-base]

CONFIG is the PETL config the tuners were trained with. LoRA is merged into
the frozen weights (PETLModel.merge_for_deploy) and only the inner model's
keys are written, so stock mmdet loads OUT.pth into the inner detector's
config. Tuners that cannot merge (adapters, prefixes...) are refused, named.
"""
import argparse

from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpetl  # noqa: F401
from mmpetl.checkpoints import export_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('config')
    parser.add_argument('base')
    parser.add_argument('tuner')
    parser.add_argument('out')
    parser.add_argument('--force-base', action='store_true')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    ckpt = export_checkpoint(cfg.model, args.base, args.tuner, args.out,
                             force=args.force_base)
    merged = ckpt['meta']['mmpetl_export']['merged']
    print(f'wrote {args.out}: {len(ckpt["state_dict"])} tensors, '
          f'{len(merged)} LoRA tuners merged')


if __name__ == '__main__':
    main()
