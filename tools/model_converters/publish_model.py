"""Publish a checkpoint MMDetection model-zoo style.

    python tools/model_converters/publish_model.py work_dirs/x/iter_500.pth \
        checkpoints/et-deformable-detr_r50_coco

Strips the optimizer and runner state, keeps meta, and writes
``{out}_{YYYYMMDD}-{sha256[:8]}.pth``: the hash prefix in the name lets
``torch.hub`` / MMEngine verify the file on download.
"""
import argparse
import os.path as osp

import mmpetl  # noqa: F401
from mmpetl.checkpoints import publish_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('in_file', help='checkpoint to publish')
    parser.add_argument('out_file', help='output name, without date/hash '
                        '(a trailing .pth is dropped)')
    parser.add_argument('--date', help='YYYYMMDD (default: today)')
    args = parser.parse_args()
    stem = args.out_file[:-4] if args.out_file.endswith('.pth') else \
        args.out_file
    final = publish_checkpoint(args.in_file, stem, args.date)
    print(f'published {final} ({osp.getsize(final) / 2**20:.2f} MiB)')


if __name__ == '__main__':
    main()
