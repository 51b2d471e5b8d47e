"""Draw a detection config's training images with their ground-truth boxes.

    python tools/analysis_tools/browse_dataset.py CONFIG \
        --not-show --output-dir work_dirs/browse

MMDetection 3.3's ``tools/analysis_tools/browse_dataset.py``: every sample
of ``train_dataloader.dataset`` after the training pipeline (resized,
flipped as training sees it), drawn by the config's ``visualizer``
(``DetLocalVisualizer``) with its class names. ``--output-dir`` writes one
image per sample (named after the image file); without ``--not-show`` each
is shown in a window for ``--show-interval`` seconds.

Bad input stops the run before anything is written: a config whose
training samples carry no boxes (a classifier: MMPretrain has its own
browse_dataset.py), nothing asked (``--not-show`` without
``--output-dir``), or a window asked for where there is no display.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

import mmpetl  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (MMDetection 3.3 browse_dataset.py's flags)."""
    parser = argparse.ArgumentParser(description='Browse a dataset')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--output-dir', default=None, type=str,
                        help='write the drawn images here')
    parser.add_argument('--not-show', default=False, action='store_true',
                        help='do not show the images in a window')
    parser.add_argument('--show-interval', type=float, default=2,
                        help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value (a.b=c '
                        'for nested keys)')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    return build_parser().parse_args(argv)


def check_request(args) -> None:
    """Refuse a run that would draw for nobody, or open a window with no
    display (before the dataset is built)."""
    if args.not_show and not args.output_dir:
        raise ValueError('--not-show without --output-dir draws nothing '
                         'anyone sees: give --output-dir DIR')
    if not args.not_show and sys.platform.startswith('linux') and not (
            os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        raise ValueError('no display to show images on (DISPLAY is not '
                         'set): pass --not-show --output-dir DIR')


def browse(cfg, output_dir: Optional[str], show: bool,
           show_interval: float) -> int:
    """Draw every training sample of ``cfg`` with its ground-truth boxes.

    Returns:
        int: the number of samples drawn.

    Raises:
        ValueError: the samples carry no ``gt_instances`` (not a
            detection dataset).
    """
    from mmdet.structures.bbox import BaseBoxes
    from mmengine.registry import (DATASETS, VISUALIZERS,
                                   init_default_scope)
    from mmengine.utils import ProgressBar
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    visualizer = VISUALIZERS.build(cfg.visualizer)
    visualizer.dataset_meta = dataset.metainfo
    bar = ProgressBar(len(dataset))
    for index in range(len(dataset)):
        item = dataset[index]
        sample = item['data_samples']
        if 'gt_instances' not in sample:
            raise ValueError(
                f'{cfg.filename}: the training samples carry no boxes '
                f'(gt_instances): this tool draws detection datasets. For '
                f'a classifier use MMPretrain\'s '
                f'tools/visualization/browse_dataset.py.')
        sample = sample.numpy()
        boxes = sample.gt_instances.get('bboxes', None)
        if isinstance(boxes, BaseBoxes):
            sample.gt_instances.bboxes = boxes.tensor
        image = item['inputs'].permute(1, 2, 0).numpy()[..., [2, 1, 0]]
        name = osp.basename(sample.img_path)
        out_file = osp.join(output_dir, name) if output_dir else None
        visualizer.add_datasample(name, image, sample, draw_pred=False,
                                  show=show, wait_time=show_interval,
                                  out_file=out_file)
        bar.update()
    sys.stdout.write('\n')
    return len(dataset)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        check_request(args)
    except ValueError as err:
        print(f'browse_dataset.py: error: {err}', file=sys.stderr)
        return 2
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    count = browse(cfg, args.output_dir, not args.not_show,
                   args.show_interval)
    if args.output_dir:
        print(f'{count} images with ground-truth boxes written to '
              f'{args.output_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
