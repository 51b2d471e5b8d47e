"""Base checkpoint + tuner checkpoint -> one full mmpetl checkpoint.

    python tools/model_converters/apply_tuner.py BASE.pth TUNER.pth OUT.pth \
        [--force-base]

The tuner checkpoint must have been trained on this base (its sha256 is
checked; --force-base accepts another base of the same architecture). The
result loads whole into the PETL config the tuners were trained with. For a
plain MMDetection checkpoint with LoRA merged into the weights, use
tools/model_converters/export_merged.py.
"""
import argparse

import mmpetl  # noqa: F401
from mmpetl.checkpoints import apply_tuner_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('base')
    parser.add_argument('tuner')
    parser.add_argument('out')
    parser.add_argument('--force-base', action='store_true')
    args = parser.parse_args()
    ckpt = apply_tuner_checkpoint(args.base, args.tuner, args.out,
                                  force=args.force_base)
    print(f'wrote {args.out}: {len(ckpt["state_dict"])} tensors')


if __name__ == '__main__':
    main()
