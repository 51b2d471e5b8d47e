"""Print a config whole, after inheritance and ``--cfg-options``.

    python tools/misc/print_config.py configs/et_deformable_detr_coco.py
    python tools/misc/print_config.py CONFIG \
        --cfg-options model.tuners.0.bottleneck=64

MMDetection 3.3's ``tools/misc/print_config.py``: ``${key}`` references
are replaced by the config's values and the data roots follow
``MMDET_DATASETS`` when it is set (MMDetection's rules), then the
``--cfg-options`` are merged; ``--save-path`` also writes the whole
config (``.py``, ``.json`` or ``.yml``; another suffix is refused before
anything is printed). mmpetl is imported first, so configs naming
``mmpetl.*`` types load.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

import mmpetl  # noqa: F401


SUFFIXES = ('.py', '.json', '.yml')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (MMDetection 3.3 print_config.py's flags)."""
    parser = argparse.ArgumentParser(description='Print the whole config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--save-path', default=None,
                        help='also write the whole config here (.py, '
                        '.json or .yml)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value (a.b=c '
                        'for nested keys)')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    return build_parser().parse_args(argv)


def resolved_config(path: str, cfg_options: Optional[dict] = None):
    """The config with ``${key}`` replaced, MMDET_DATASETS applied and
    ``cfg_options`` merged (MMDetection's order)."""
    from mmdet.utils import replace_cfg_vals, update_data_root
    cfg = replace_cfg_vals(Config.fromfile(path))
    update_data_root(cfg)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    suffix = osp.splitext(args.save_path or '')[1]
    if args.save_path is not None and suffix not in SUFFIXES:
        print(f'print_config.py: error: --save-path {args.save_path}: the '
              f'suffix picks the format, one of {", ".join(SUFFIXES)}',
              file=sys.stderr)
        return 2
    cfg = resolved_config(args.config, args.cfg_options)
    print(f'Config:\n{cfg.pretty_text}')
    if args.save_path is not None:
        os.makedirs(osp.dirname(osp.abspath(args.save_path)), exist_ok=True)
        cfg.dump(args.save_path)
        print(f'Config saving at {args.save_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
