"""Check a GPU demo run (tools/demo/run_demo.py) and keep its small files.

Reads ``<work-dir>/transfer_table.json`` and every run's MMEngine scalars
(``<run>/<timestamp>/vis_data/scalars.json``) and checks: each run trained
on the expected device, every logged loss is finite, the mAP is a number,
and ET-Deformable-DETR's tuner checkpoint was written. Copies the table,
the scalars, the logs and the ET tuner checkpoint to ``--keep`` (no full
checkpoints). Exit 1 when a check fails.

    python tools/gpu/check_demo.py WORK_DIR --keep RESULTS_DIR [--device cuda]
"""
import argparse
import json
import math
import os.path as osp
import shutil
import sys
from pathlib import Path


def losses_of(scalars: Path):
    """``[(step, {loss name: value})]`` of one scalars.json."""
    out = []
    for line in scalars.read_text().splitlines():
        record = json.loads(line)
        values = {k: v for k, v in record.items()
                  if 'loss' in k and isinstance(v, (int, float))}
        if values:
            out.append((record.get('step', record.get('iter')), values))
    return out


def check(work_dir: Path, keep: Path, device: str):
    """Findings (strings, empty when all passed) and a summary line each."""
    table = work_dir / 'transfer_table.json'
    if not table.exists():
        return [f'{table} missing: the demo did not finish'], []
    data = json.loads(table.read_text())
    problems, lines = [], []
    keep.mkdir(parents=True, exist_ok=True)
    for name in ('transfer_table.json', 'transfer_table.md'):
        if (work_dir / name).exists():
            shutil.copy(work_dir / name, keep / name)
    for row in data['rows']:
        label = row['method']
        if not str(row.get('device', '')).startswith(device):
            problems.append(f'{label}: trained on {row.get("device")}, '
                            f'not {device}')
        if not isinstance(row['bbox_mAP'], (int, float)) or \
                math.isnan(row['bbox_mAP']):
            problems.append(f'{label}: no bbox mAP ({row["bbox_mAP"]})')
        run_dir = Path(row['tuner_file']).parent
        scalars = sorted(run_dir.glob('*/vis_data/scalars.json'))
        if not scalars:
            problems.append(f'{label}: no scalars.json under {run_dir}')
        steps = [s for f in scalars for s in losses_of(f)]
        bad = [(step, k, v) for step, values in steps
               for k, v in values.items() if not math.isfinite(v)]
        if not steps:
            problems.append(f'{label}: no losses logged')
        if bad:
            problems.append(f'{label}: non-finite losses {bad[:5]}')
        out = keep / run_dir.name
        out.mkdir(exist_ok=True)
        for f in scalars:
            shutil.copy(f, out / f'{f.parent.parent.name}_scalars.json')
        for log in run_dir.glob('*/*.log'):
            shutil.copy(log, out / log.name)
        if 'mmpetl' in label:
            tuner = Path(row['tuner_file'])
            if not tuner.exists():
                problems.append(f'{label}: tuner checkpoint {tuner} missing')
            else:
                shutil.copy(tuner, out / tuner.name)
        first = steps[0][1].get('loss') if steps else None
        last = steps[-1][1].get('loss') if steps else None
        lines.append(
            f'{label}: {row.get("device")} {row.get("amp")}, {row["iters"]} '
            f'iters, loss {first} -> {last} ({len(steps)} logged, all '
            f'finite: {not bad}), bbox mAP {row["bbox_mAP"]:.3f}, AP50 '
            f'{row["bbox_AP50"]:.3f}, {row["minutes"]:.2f} min, '
            f'{row["checkpoint"]} {row["checkpoint_mib"]:.2f} MiB')
    return problems, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--keep', required=True)
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    args = parser.parse_args(argv)
    problems, lines = check(Path(args.work_dir), Path(args.keep),
                            args.device)
    print('\n'.join(lines))
    if problems:
        print('DEMO CHECK FAILED:\n  ' + '\n  '.join(problems))
        return 1
    print(f'demo check passed ({osp.join(args.keep, "transfer_table.md")})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
