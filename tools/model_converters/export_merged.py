"""Base + LoRA tuner checkpoint -> a plain MMDetection/MMPretrain checkpoint.

    python tools/model_converters/export_merged.py CONFIG BASE.pth TUNER.pth \
        OUT.pth [--force-base]

CONFIG is the PETL config the tuners were trained with. LoRA is merged into
the frozen weights (PETLModel.merge_for_deploy) and only the inner model's
keys are written, so stock mmdet loads OUT.pth; OUT.py beside it is the
inner detector's config with the task's classes and no mmpetl imports,
hooks or optimizer constructor:

    from mmdet.apis import init_detector, inference_detector
    model = init_detector('OUT.py', 'OUT.pth')   # mmpetl not imported

Tuners that cannot merge (adapters, prefixes...) are refused, named. The
classes are the tuner checkpoint's (meta.classes), else the config's test
dataset's.
"""
import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpetl  # noqa: F401
from mmpetl.checkpoints import (export_checkpoint, load_tuner_checkpoint,
                                write_plain_config)
from mmpetl.utils.config_check import dataset_classes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('config')
    parser.add_argument('base')
    parser.add_argument('tuner')
    parser.add_argument('out')
    parser.add_argument('--force-base', action='store_true')
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    classes = load_tuner_checkpoint(args.tuner)['meta'].get('classes') or \
        dataset_classes(cfg, 'test')
    ckpt = export_checkpoint(cfg.model, args.base, args.tuner, args.out,
                             force=args.force_base, classes=classes)
    config_out = osp.splitext(args.out)[0] + '.py'
    needs = write_plain_config(cfg, config_out, classes)
    merged = ckpt['meta']['mmpetl_export']['merged']
    print(f'wrote {args.out}: {len(ckpt["state_dict"])} tensors, '
          f'{len(merged)} LoRA tuners merged; its config: {config_out}')
    if needs:
        print(f'note: {config_out} still builds types that mmpetl '
              f'registers ({"; ".join(needs)}), so it imports mmpetl '
              f'(custom_imports); everything else is stock mmdet.')


if __name__ == '__main__':
    main()
