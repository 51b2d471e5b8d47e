"""Dry run: build a config's model, without data, and print where tuners go.

    python tools/misc/print_injection.py configs/et_deformable_detr_coco.py

Prints the table module | tuner | config | params, the totals, the
trainable/frozen parameter groups and the layers run under activation
checkpointing (``activation_checkpointing``). Nothing is downloaded and no
data is read.
"""
import argparse

from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope

import mmpetl  # noqa: F401
from mmpetl.injection import injection_table, parameter_groups_table
from mmpetl.models import checkpointing_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, xxx=yyy')
    return parser.parse_args(argv)


def build_model(config_path, cfg_options=None):
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args.config, args.cfg_options)
    if not hasattr(model, 'injected'):
        raise SystemExit(f'{args.config}: the model is not an mmpetl.PETLModel '
                         f'(type={type(model).__name__}); nothing is injected')
    print(injection_table(model.injected, model))
    print()
    print(parameter_groups_table(model))
    print()
    print(checkpointing_table(model, model.checkpointed_layers,
                              model.checkpoint_keep))


if __name__ == '__main__':
    main()
