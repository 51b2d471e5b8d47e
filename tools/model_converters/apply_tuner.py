"""Base checkpoint + tuner checkpoint -> one full checkpoint.

    python tools/model_converters/apply_tuner.py BASE.pth TUNER.pth OUT.pth \
        [--merge-lora] [--force-base]

The tuner checkpoint must have been trained on this base (its sha256 is
checked; --force-base accepts another base of the same architecture).
--merge-lora folds LoRA into the base weights, so a model with only LoRA
tuners becomes a vanilla model again (no extra latency).
"""
import argparse

import mmpetl  # noqa: F401
from mmpetl.utils.checkpoint import apply_tuner_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('base')
    parser.add_argument('tuner')
    parser.add_argument('out')
    parser.add_argument('--merge-lora', action='store_true')
    parser.add_argument('--force-base', action='store_true')
    args = parser.parse_args()
    ckpt = apply_tuner_checkpoint(args.base, args.tuner, args.out,
                                  merge_lora=args.merge_lora,
                                  force=args.force_base)
    print(f'wrote {args.out}: {len(ckpt["state_dict"])} tensors')


if __name__ == '__main__':
    main()
