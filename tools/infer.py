"""Detect objects in images with one base checkpoint and tuner checkpoints.

    python tools/infer.py INPUTS... CONFIG BASE.pth --tuner TUNER.pth \
        --out-dir DIR [--score-thr 0.3] [--device cpu] [--batch-size 4]
    python tools/infer.py INPUTS CONFIG BASE.pth --tuner garments=A.pth \
        --tuner shoes=B.pth [--task shoes] --out-dir DIR

INPUTS are images, folders (their images) or globs in quotes. CONFIG is
the PETL config the tuners were trained with. The base is loaded once and
every tuner checkpoint is checked against it (the base's sha256, as
tools/test.py does); ``--force-base`` accepts a base of the same
architecture with other weights. Writes, as MMDetection's DetInferencer:

    DIR/vis/<image>.png     detections drawn (the task's class names,
                            scores >= --score-thr)
    DIR/preds/<image>.json  every detection: bboxes (x1, y1, x2, y2 in
                            image pixels), scores, labels, label_names

With several tasks and no ``--task``, every image goes through every task
(one forward serves a batch of several tasks, see mmpetl.apis.tasks) and
each task writes DIR/<task>/vis and DIR/<task>/preds.

Bad input (a tuner for another base, an unknown task, class names that do
not fit a head, no image found) stops the run before DIR is touched, exit
status 2. An image that cannot be read is skipped: the others are written,
the failures listed at the end, exit status 1. Every file is written to a
temporary name and renamed, so DIR never holds half a file.
"""
import argparse
import os.path as osp
import sys
from collections import Counter
from typing import List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools'))

import mmpetl  # noqa: E402,F401
from mmpetl.apis import (ImageReadError, MultiTaskDetector,  # noqa: E402
                         PredictionWriter, RoutingError, TaskError,
                         list_images, read_image, unknown_task)
from mmpetl.checkpoints import check_base, load_tuner_checkpoint  # noqa
from mmpetl.utils import CheckpointError  # noqa: E402
from tool_utils import parse_pairs  # noqa: E402

BAD_INPUT = (CheckpointError, TaskError, FileNotFoundError, KeyError,
             ValueError)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('inputs', nargs='+',
                   help='images, folders or globs (quoted)')
    p.add_argument('config', help='the PETL config the tuners trained with')
    p.add_argument('base', help='the shared base checkpoint')
    p.add_argument('--tuner', action='append', required=True,
                   metavar='[TASK=]TUNER',
                   help='a tuner checkpoint, or TASK=TUNER (repeat for '
                   'several tasks)')
    p.add_argument('--task', help='the task to run (default: the only one; '
                   'with several, every task)')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='draw detections from this score up (the JSON '
                   'keeps all)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch-size', type=int, default=4,
                   help='samples per forward')
    p.add_argument('--force-base', action='store_true',
                   help='accept a base with other weights of the same '
                   'architecture')
    return p.parse_args(argv)


def parse_tuners(values: Sequence[str]) -> List[Tuple[str, str]]:
    """``TASK=PATH`` (or a bare path: the task is named after the file)."""
    return [(name or osp.splitext(osp.basename(path))[0], path)
            for name, path in parse_pairs(values, '--tuner')]


def output_stems(images: Sequence[str]) -> List[str]:
    """Output names (the image file's stem); two images with one stem
    would overwrite each other: refused."""
    stems = [osp.splitext(osp.basename(p))[0] for p in images]
    clash = sorted(s for s, c in Counter(stems).items() if c > 1)
    if clash:
        both = [p for p in images
                if osp.splitext(osp.basename(p))[0] == clash[0]]
        raise ValueError(
            f'{len(clash)} output name(s) would be written twice (first: '
            f'{clash[0]!r} from {both[:3]}): the outputs are named after '
            f'the image file. Run the folders separately or rename them.')
    return stems


def _batches(items, size):
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + max(1, size)]


def _mixed_batches(detector: MultiTaskDetector, tasks) -> bool:
    """Whether one forward may hold samples of several tasks."""
    if len(tasks) < 2:
        return False
    try:
        detector.bank.check_routable()
    except RoutingError as err:  # one task per forward instead
        print(f'note: {err}', file=sys.stderr)
        return False
    return True


def run(detector: MultiTaskDetector, images: Sequence[str],
        tasks: Sequence[str], out_dir: str, score_thr: float,
        batch_size: int) -> List[Tuple[str, str]]:
    """Predict and write every image under every task in ``tasks``;
    returns ``(image, reason)`` of the images that could not be read."""
    from mmengine.utils import ProgressBar
    stems = dict(zip(images, output_stems(images)))
    nested = len(tasks) > 1
    writers = {t: PredictionWriter(osp.join(out_dir, t) if nested
                                   else out_dir, score_thr) for t in tasks}
    mixed = _mixed_batches(detector, tasks)
    failures = []
    bar = ProgressBar(len(images)) if len(images) > 1 else None
    for chunk in _batches(list(images), batch_size):
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, read_image(path)))
            except ImageReadError as err:
                failures.append((path, str(err)))
        if mixed or not nested:  # (image, task) pairs, tasks mixed
            groups = _batches([(p, i, t) for p, i in loaded for t in tasks],
                              batch_size)
        else:  # one task per forward
            groups = [g for t in tasks for g in _batches(
                [(p, i, t) for p, i in loaded], batch_size)]
        for group in groups:
            samples = detector.predict_arrays([img for _, img, _ in group],
                                              [t for _, _, t in group])
            for (path, img, task), sample in zip(group, samples):
                writers[task].write(stems[path], img, sample,
                                    sample.classes, task)
        if bar is not None:
            for _ in chunk:
                bar.update()
    if bar is not None:
        sys.stdout.write('\n')
    return failures


def check_inputs(args) -> Tuple[List[Tuple[str, str]], List[str]]:
    """What can be checked before the model is built (seconds): task
    names, the images, each tuner against the base's sha256. Returns
    ``(tuners, images)``; raises on bad input."""
    tuners = parse_tuners(args.tuner)
    if args.task and args.task not in dict(tuners):
        raise unknown_task(args.task, [n for n, _ in tuners])
    images = list_images(args.inputs)
    output_stems(images)
    for _, path in tuners:
        check_base(load_tuner_checkpoint(path), args.base, args.force_base)
    return tuners, images


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        tuners, images = check_inputs(args)
        detector = MultiTaskDetector(args.config, args.base, args.device)
        for name, path in tuners:
            detector.add_task(name, path, force_base=args.force_base)
        tasks = [args.task] if args.task else detector.tasks
    except BAD_INPUT as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        print(f'infer.py: error: {message}', file=sys.stderr)
        print(f'nothing was written to {args.out_dir}', file=sys.stderr)
        return 2
    failures = run(detector, images, tasks, args.out_dir, args.score_thr,
                   args.batch_size)
    done = len(images) - len(failures)
    print(f'{done} of {len(images)} images x {len(tasks)} task(s) '
          f'({", ".join(tasks)}) written to {args.out_dir}')
    if failures:
        print(f'{len(failures)} image(s) could not be read and were '
              f'skipped:', file=sys.stderr)
        for path, reason in failures:
            print(f'  {path}: {reason}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
