"""Detect objects in images: MMDetection's ``demo/image_demo.py``, with tuners.

    python tools/infer.py INPUTS... CONFIG --weights BASE.pth \
        --tuner TUNER.pth [--out-dir outputs] [--pred-score-thr 0.3]
    python tools/infer.py INPUTS CONFIG --weights BASE.pth \
        --tuner garments=A.pth --tuner shoes=B.pth [--task shoes]
    python tools/infer.py INPUTS MERGED.py --weights MERGED.pth

The arguments and defaults are those of MMDetection 3.3's
``demo/image_demo.py``: INPUTS (images, folders or quoted globs) then the
model's CONFIG, ``--weights``, ``--out-dir`` (default ``outputs``),
``--device`` (``cuda:0`` when CUDA is available, else ``cpu``),
``--pred-score-thr`` 0.3, ``--batch-size`` 1, ``--show``,
``--no-save-vis``, ``--no-save-pred``, ``--print-result``, ``--palette``.
Not taken, because they serve grounding models (text prompts) that
mmpetl does not tune: ``--texts``, ``--custom-entities``,
``--chunked-size``, ``--tokens-positive``; and CONFIG is a file (no
model-zoo name is downloaded).

mmpetl adds ``--tuner [TASK=]FILE`` (repeat for several tasks) and
``--task``. With ``--tuner``, ``--weights`` is the shared base: it is
loaded once and every tuner checkpoint is checked against it (the base's
sha256, as tools/test.py does); ``--force-base`` accepts a base of the
same architecture with other weights. Without ``--tuner``, ``--weights``
must hold every tensor of CONFIG's model: a merged checkpoint
(tools/model_converters/export_merged.py, with its config), an applied one
(tools/model_converters/apply_tuner.py, with the PETL config) or any
MMDetection checkpoint. Writes, as MMDetection's DetInferencer:

    OUT_DIR/vis/<image>.png     detections drawn (the task's class names,
                                scores >= --pred-score-thr)
    OUT_DIR/preds/<image>.json  every detection: bboxes (x1, y1, x2, y2 in
                                image pixels), scores, labels, label_names

With several tasks and no ``--task``, every image goes through every task
(one forward serves a batch of several tasks, see
mmpetl.models.multitask) and each task writes OUT_DIR/<task>/vis and
OUT_DIR/<task>/preds.

Bad input (a tuner for another base, an unknown task, class names that do
not fit a head, no image found, weights that do not fit the config, the
pre-MMDetection argument order) stops the run before OUT_DIR is touched,
exit status 2. An image that cannot be read is skipped: the others are
written, the failures listed at the end, exit status 1. Every file is
written to a temporary name and renamed, so OUT_DIR never holds half a
file.
"""
import argparse
import json
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
                         list_images, prediction_dict, read_image,
                         unknown_task)
from mmpetl.checkpoints import (check_base, load_tuner_checkpoint,  # noqa
                                state_dict_of)
from mmpetl.utils import CheckpointError, load_checkpoint_file  # noqa: E402
from mmpetl.utils.config_check import dataset_classes  # noqa: E402
from tool_utils import parse_pairs  # noqa: E402

BAD_INPUT = (CheckpointError, TaskError, FileNotFoundError, KeyError,
             ValueError)


CHECKPOINT_EXTENSIONS = ('.pth', '.pt', '.safetensors')


def default_device() -> str:
    """MMDetection's default (``cuda:0``) where CUDA is available, else
    ``cpu``."""
    import torch
    return 'cuda:0' if torch.cuda.is_available() else 'cpu'


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: MMDetection 3.3 ``image_demo.py``'s arguments
    and defaults (the grounding ones excepted) plus mmpetl's."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('inputs', nargs='+',
                   help='images, folders or globs (quoted)')
    p.add_argument('model', help='the model\'s config file (with --tuner: '
                   'the PETL config the tuners trained with)')
    p.add_argument('--weights', default=None,
                   help='checkpoint: the shared base with --tuner, else a '
                   'checkpoint holding the whole model (merged/applied)')
    p.add_argument('--out-dir', type=str, default='outputs',
                   help='output folder of vis/ and preds/')
    p.add_argument('--device', default=default_device(),
                   help='device used for inference (default: cuda:0 when '
                   'CUDA is available, else cpu)')
    p.add_argument('--pred-score-thr', type=float, default=0.3,
                   help='draw detections from this score up (the JSON '
                   'keeps all)')
    p.add_argument('--batch-size', type=int, default=1,
                   help='samples per forward')
    p.add_argument('--show', action='store_true',
                   help='display each image in a popup window')
    p.add_argument('--no-save-vis', action='store_true',
                   help='do not write vis/*.png')
    p.add_argument('--no-save-pred', action='store_true',
                   help='do not write preds/*.json')
    p.add_argument('--print-result', action='store_true',
                   help='print each image\'s detections (JSON, one line)')
    p.add_argument('--palette', default='none',
                   choices=['coco', 'voc', 'citys', 'random', 'none'],
                   help='box colours (none: the dataset\'s or the '
                   'visualizer\'s)')
    p.add_argument('--tuner', action='append', default=None,
                   metavar='[TASK=]FILE',
                   help='a tuner checkpoint, or TASK=FILE (repeat for '
                   'several tasks); without it --weights holds the whole '
                   'model')
    p.add_argument('--task', help='the task to run (default: the only one; '
                   'with several, every task)')
    p.add_argument('--force-base', action='store_true',
                   help='accept a base with other weights of the same '
                   'architecture')
    return p


def parse_args(argv=None):
    """The parsed arguments (see :func:`build_parser`)."""
    return build_parser().parse_args(argv)


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


def run(detector, images: Sequence[str], tasks: Sequence[str],
        out_dir: str, score_thr: float, batch_size: int,
        writer_options: Optional[dict] = None,
        print_result: bool = False) -> List[Tuple[str, str]]:
    """Predict and write every image under every task in ``tasks``.

    Args:
        detector: a :class:`MultiTaskDetector` or :class:`WholeModel`.
        images: image paths.
        tasks: the tasks each image goes through.
        out_dir: the output folder (``<task>/`` below it for several).
        score_thr: detections drawn from this score up.
        batch_size: samples per forward.
        writer_options: ``palette``, ``save_vis``, ``save_pred``, ``show``
            of :class:`mmpetl.apis.PredictionWriter`.
        print_result: print each image's detections as one JSON line.

    Returns:
        list: ``(image, reason)`` of the images that could not be read.
    """
    from mmengine.utils import ProgressBar
    stems = dict(zip(images, output_stems(images)))
    nested = len(tasks) > 1
    writers = {t: PredictionWriter(osp.join(out_dir, t) if nested
                                   else out_dir, score_thr,
                                   **(writer_options or {}))
               for t in tasks}
    mixed = _mixed_batches(detector, tasks)
    failures = []
    bar = ProgressBar(len(images)) if len(images) > 1 and \
        not print_result else None
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
                if print_result:
                    print(json.dumps(dict(image=path, **prediction_dict(
                        sample, sample.classes, task))))
        if bar is not None and not print_result:
            for _ in chunk:
                bar.update()
    if bar is not None and not print_result:
        sys.stdout.write('\n')
    return failures


class WholeModel:
    """A checkpoint that holds every tensor of its config's model, run
    without tuner files: a merged (export_merged.py) or applied
    (apply_tuner.py) checkpoint, or any MMDetection checkpoint.

    Args:
        config: the model's config file.
        weights: the checkpoint.
        device: ``'cpu'``, ``'cuda:0'``...
        task: the name recorded in the outputs.

    Raises:
        ValueError: the checkpoint lacks tensors of the model, has others,
            or other shapes (a base without its tuner: the fix named).
    """

    bank = None  # one task: never a mixed batch

    def __init__(self, config: str, weights: str, device: str,
                 task: str) -> None:
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        cfg = Config.fromfile(config)
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        ckpt = load_checkpoint_file(weights)
        state = state_dict_of(ckpt)
        model = MODELS.build(cfg.model)
        check_whole(model.state_dict(), state, weights, config)
        model.load_state_dict(state, strict=True)
        model.cfg = cfg
        self.model = model.to(device).eval()
        meta = ckpt.get('meta') or {}
        classes = (meta.get('dataset_meta') or {}).get('classes') or \
            meta.get('classes') or (meta.get('mmpetl') or {}).get(
                'classes') or dataset_classes(cfg, 'test')
        self.classes = tuple(classes) if classes else None
        self.tasks = [task]

    def predict_arrays(self, images: Sequence, tasks: Sequence[str]):
        """Detections of BGR ``(H, W, 3)`` arrays (MMDetection's
        ``inference_detector``), metainfo ``task`` and ``classes`` set."""
        from mmdet.apis import inference_detector
        samples = inference_detector(self.model, list(images))
        for sample, name in zip(samples, tasks):
            sample.set_metainfo(dict(task=name, classes=self.classes))
        return samples


def check_whole(own: dict, state: dict, weights: str, config: str) -> None:
    """Refuse a checkpoint that does not hold exactly the model's tensors
    (``own``: the model's state dict), naming what differs and the fix."""
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and
              tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or extra or shapes):
        return
    parts = []
    if missing:
        parts.append(f'lacks {len(missing)} of its tensors (first: '
                     f'{missing[0]})')
    if extra:
        parts.append(f'has {len(extra)} it does not (first: {extra[0]})')
    if shapes:
        parts.append(f'has {len(shapes)} of other shapes (first: '
                     f'{shapes[0]}: {tuple(state[shapes[0]].shape)} vs '
                     f'{tuple(own[shapes[0]].shape)})')
    raise ValueError(
        f'--weights {weights} does not hold the model of {config}: it '
        f'{"; ".join(parts)}. Without --tuner the checkpoint must hold the '
        f'whole model. A base checkpoint needs its tuner: --tuner '
        f'TUNER.pth (or apply it first: tools/model_converters/'
        f'apply_tuner.py); a merged checkpoint goes with the config '
        f'export_merged.py wrote beside it.')


def check_order(args) -> None:
    """Refuse the arguments in mmpetl's former order (``INPUTS... CONFIG
    BASE``) or a checkpoint given as MODEL, naming MMDetection's order."""
    if not args.model.endswith(CHECKPOINT_EXTENSIONS):
        return
    if args.inputs[-1].endswith('.py'):
        raise ValueError(
            f'{args.model} is a checkpoint where the config goes: '
            f'tools/infer.py takes MMDetection\'s image_demo.py order, '
            f'INPUTS... CONFIG --weights CHECKPOINT: tools/infer.py ... '
            f'{args.inputs[-1]} --weights {args.model}')
    raise ValueError(
        f'{args.model} is a checkpoint where the config goes: give the '
        f'config file as MODEL and the checkpoint as --weights (mmpetl '
        f'does not read a config out of a checkpoint).')


def check_inputs(args) -> Tuple[List[Tuple[str, str]], List[str]]:
    """What can be checked before the model is built (seconds): the
    argument order, task names, the images, each tuner against the base's
    sha256. Returns ``(tuners, images)``; raises on bad input."""
    check_order(args)
    if args.weights is None:
        raise ValueError(
            f'no --weights: give the checkpoint (the base with --tuner, '
            f'else one holding the whole model), e.g. tools/infer.py '
            f'INPUTS {args.model} --weights BASE.pth --tuner TUNER.pth')
    tuners = parse_tuners(args.tuner)
    if args.task and tuners and args.task not in dict(tuners):
        raise unknown_task(args.task, [n for n, _ in tuners])
    images = list_images(args.inputs)
    output_stems(images)
    if not osp.isfile(args.weights):
        raise FileNotFoundError(f'--weights: checkpoint not found: '
                                f'{args.weights}')
    for _, path in tuners:
        check_base(load_tuner_checkpoint(path), args.weights,
                   args.force_base)
    return tuners, images


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    mmpetl.apply_patches()  # MMCV/MMEngine as mmpetl runs them (logged)
    save = not (args.no_save_vis and args.no_save_pred)
    shown = args.out_dir if save else '(nothing: --no-save-vis and ' \
        '--no-save-pred)'
    try:
        tuners, images = check_inputs(args)
        if tuners:
            detector = MultiTaskDetector(args.model, args.weights,
                                         args.device)
            for name, path in tuners:
                detector.add_task(name, path, force_base=args.force_base)
        else:
            detector = WholeModel(
                args.model, args.weights, args.device, args.task or
                osp.splitext(osp.basename(args.weights))[0])
        tasks = [args.task] if args.task and tuners else detector.tasks
    except BAD_INPUT as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        print(f'infer.py: error: {message}', file=sys.stderr)
        print(f'nothing was written to {args.out_dir}', file=sys.stderr)
        return 2
    options = dict(palette=None if args.palette == 'none' else args.palette,
                   save_vis=not args.no_save_vis,
                   save_pred=not args.no_save_pred, show=args.show)
    failures = run(detector, images, tasks, args.out_dir,
                   args.pred_score_thr, args.batch_size, options,
                   args.print_result)
    done = len(images) - len(failures)
    print(f'{done} of {len(images)} images x {len(tasks)} task(s) '
          f'({", ".join(tasks)}) written to {shown}',
          file=sys.stderr if args.print_result else sys.stdout)
    if failures:
        print(f'{len(failures)} image(s) could not be read and were '
              f'skipped:', file=sys.stderr)
        for path, reason in failures:
            print(f'  {path}: {reason}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
