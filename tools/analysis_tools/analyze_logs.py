"""Plot curves and time the iterations of MMEngine's JSON training logs.

    python tools/analysis_tools/analyze_logs.py plot_curve \
        work_dirs/et/20261204_101500/vis_data/scalars.json \
        --keys loss bbox_mAP --out curves.png
    python tools/analysis_tools/analyze_logs.py cal_train_time \
        work_dirs/et/20261204_101500/vis_data/scalars.json

MMDetection 3.3's ``tools/analysis_tools/analyze_logs.py``, on the
``vis_data/scalars.json`` (or ``<timestamp>.json``) every MMEngine run
writes: one JSON record per logged training step (``loss``, ``lr``,
``time``... with ``iter``, and ``epoch`` in epoch-based runs) and one per
validation (``coco/bbox_mAP``...). A key names a training value, or a
validation metric by its last part (``bbox_mAP`` for ``coco/bbox_mAP``).

``plot_curve`` draws training values against the iteration and
validation metrics against the epoch (epoch-based runs) or the iteration
(iteration-based runs, as mmpetl's demo). Plots are drawn with
matplotlib's Agg backend (``--backend`` picks another); without ``--out``
the figure goes to ``<first log's folder>/<keys>.png`` (Agg cannot open a
window).

``cal_train_time`` prints, per log, the slowest and fastest epoch (or, in
iteration-based runs, stretch between two validations), the spread over
them and the mean time per iteration; the first value of each is left out
unless ``--include-outliers``.

A key no log holds, or a log with no training record, is refused naming
what the log has.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np


def add_plot_parser(subparsers) -> None:
    plot = subparsers.add_parser('plot_curve', help='plot curves')
    plot.add_argument('json_logs', type=str, nargs='+',
                      help='MMEngine JSON logs (vis_data/scalars.json)')
    plot.add_argument('--keys', type=str, nargs='+', default=['bbox_mAP'],
                      help='the values to plot')
    plot.add_argument('--start-epoch', type=str, default='1',
                      help='the first epoch (iteration-based runs: '
                      'validation stretch) to plot')
    plot.add_argument('--eval-interval', type=str, default='1',
                      help='the validation interval of the run (epochs); '
                      'read from the log, kept for MMDetection\'s '
                      'command lines')
    plot.add_argument('--title', type=str, help='title of the figure')
    plot.add_argument('--legend', type=str, nargs='+', default=None,
                      help='one legend entry per (log, key)')
    plot.add_argument('--backend', type=str, default=None,
                      help='matplotlib backend (default Agg)')
    plot.add_argument('--style', type=str, default='white',
                      help='seaborn style, when seaborn is installed')
    plot.add_argument('--out', type=str, default=None,
                      help='the figure file')


def add_time_parser(subparsers) -> None:
    timing = subparsers.add_parser(
        'cal_train_time', help='the average time per training iteration')
    timing.add_argument('json_logs', type=str, nargs='+',
                        help='MMEngine JSON logs (vis_data/scalars.json)')
    timing.add_argument('--include-outliers', action='store_true',
                        help='include the first value of every epoch')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (MMDetection 3.3 analyze_logs.py's tasks and
    flags)."""
    parser = argparse.ArgumentParser(description='Analyze Json Log')
    subparsers = parser.add_subparsers(dest='task', help='task parser')
    subparsers.required = True
    add_plot_parser(subparsers)
    add_time_parser(subparsers)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    return build_parser().parse_args(argv)


def load_json_log(path: str) -> Dict[str, List[dict]]:
    """``{'train': [...], 'val': [...]}`` records of one JSON log. Each
    training record gets ``group``: its epoch, or (iteration-based runs)
    the number of validations before it, from 1; each validation record
    ``group`` (its number, from 1) and ``after_iter`` (the iteration of
    the training record before it)."""
    train, val = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{path} line {number} is not JSON '
                                 f'({err}): give MMEngine\'s JSON log '
                                 f'(vis_data/scalars.json)') from err
            if any('/' in k for k in record):
                record.update(group=len(val) + 1, after_iter=train[-1].get(
                    'iter', train[-1].get('step', 0)) if train else 0)
                val.append(record)
            elif 'time' in record or 'loss' in record:
                record['group'] = record.get('epoch', len(val) + 1)
                train.append(record)
    if not train:
        raise ValueError(f'{path} holds no training record (loss, time): '
                         f'give the JSON log of a training run '
                         f'(work_dir/<timestamp>/vis_data/scalars.json)')
    return dict(train=train, val=val)


def _val_key(log: Dict[str, List[dict]], key: str) -> Optional[str]:
    for record in log['val']:
        for name in record:
            if name == key or name.split('/')[-1] == key:
                return name
    return None


def curve(log: Dict[str, List[dict]], key: str, path: str,
          start: int = 1):
    """``(xs, ys, x_label, is_val)`` of ``key`` in a loaded log."""
    name = _val_key(log, key)
    epochs = any('epoch' in r for r in log['train'])
    if name is not None:
        records = [r for r in log['val'] if name in r]
        xs = [r.get('step', r['group']) if epochs else r['after_iter']
              for r in records]
        keep = [i for i, (x, r) in enumerate(zip(xs, records))
                if (x if epochs else r['group']) >= start]
        return ([xs[i] for i in keep], [records[i][name] for i in keep],
                'epoch' if epochs else 'iter', True)
    records = [r for r in log['train'] if key in r and r['group'] >= start]
    if not records:
        known = sorted(({k for r in log['train'] for k in r} |
                        {k for r in log['val'] for k in r}) -
                       {'group', 'after_iter'})
        raise KeyError(f'{path} holds no {key!r}; it has: '
                       f'{", ".join(known)}')
    xs = [r.get('iter', r.get('step')) for r in records]
    return xs, [r[key] for r in records], 'iter', False


def plot_curve(logs: List[Dict], args) -> str:
    """Draw every (log, key) curve into one figure; returns its file."""
    import matplotlib
    matplotlib.use(args.backend or 'Agg')
    import matplotlib.pyplot as plt
    try:
        import seaborn as sns
        sns.set_style(args.style)
    except ImportError:
        if args.style != 'white':
            print(f'note: --style {args.style} needs seaborn (not '
                  f'installed): matplotlib\'s default style',
                  file=sys.stderr)
    legend = args.legend or [f'{path}_{key}' for path in args.json_logs
                             for key in args.keys]
    if len(legend) != len(args.json_logs) * len(args.keys):
        raise ValueError(f'--legend has {len(legend)} entries for '
                         f'{len(args.json_logs)} log(s) x {len(args.keys)} '
                         f'key(s): give one per curve')
    plt.figure()
    for i, (path, log) in enumerate(zip(args.json_logs, logs)):
        for j, key in enumerate(args.keys):
            xs, ys, label, is_val = curve(log, key, path,
                                          int(args.start_epoch))
            print(f'plot curve of {path}, metric is {key}')
            style = dict(marker='o') if is_val else dict(linewidth=0.5)
            plt.plot(xs, ys, label=legend[i * len(args.keys) + j], **style)
            plt.xlabel(label)
    plt.legend()
    if args.title:
        plt.title(args.title)
    out = args.out or osp.join(osp.dirname(osp.abspath(args.json_logs[0])),
                               '_'.join(args.keys) + '.png')
    plt.savefig(out)
    plt.close()
    print(f'save curve to: {out}')
    return out


def cal_train_time(logs: List[Dict], args) -> List[dict]:
    """Print (and return) the per-epoch time statistics of each log."""
    stats = []
    for path, log in zip(args.json_logs, logs):
        print(f'{"-" * 5}Analyze train time of {path}{"-" * 5}')
        groups: Dict[int, List[float]] = {}
        for record in log['train']:
            if 'time' in record:
                groups.setdefault(record['group'], []).append(record['time'])
        means = {g: float(np.mean(t if args.include_outliers else t[1:]))
                 for g, t in groups.items()
                 if len(t) > (0 if args.include_outliers else 1)}
        if not means:
            raise ValueError(
                f'{path}: every epoch has one timed record, which is left '
                f'out as an outlier: log more often (default_hooks.logger.'
                f'interval) or pass --include-outliers')
        unit = 'epoch' if any('epoch' in r for r in log['train']) else \
            'stretch between validations'
        slowest = max(means, key=means.get)
        fastest = min(means, key=means.get)
        every = [x for g, t in groups.items() if g in means
                 for x in (t if args.include_outliers else t[1:])]
        result = dict(slowest=slowest, fastest=fastest,
                      std=float(np.std(list(means.values()))),
                      mean=float(np.mean(every)))
        print(f'slowest {unit} {slowest}, average time is '
              f'{means[slowest]:.4f}')
        print(f'fastest {unit} {fastest}, average time is '
              f'{means[fastest]:.4f}')
        print(f'time std over {unit}s is {result["std"]:.4f}')
        print(f'average iter time: {result["mean"]:.4f} s/iter')
        print()
        stats.append(result)
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        logs = [load_json_log(path) for path in args.json_logs]
        if args.task == 'plot_curve':
            plot_curve(logs, args)
        else:
            cal_train_time(logs, args)
    except (OSError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        print(f'analyze_logs.py: error: {message}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
