"""One base, many tasks: switching, memory per task, mixed-task batches.

    python tools/analysis_tools/task_benchmark.py
    python tools/analysis_tools/task_benchmark.py --quick --out-dir /tmp/tasks

The model is the demo's ET-Deformable-DETR (configs/demo, d=128,
MobileNetV2, random weights: time and memory do not depend on their
values) with parallel adapters of bottleneck b in every FFN and scaled
prefixes (l=32) in every attention; b=0 is heads only. Measured side by
side in one process, per tuner size:

* switch: ``TaskBank.switch`` between registered tasks (the tasks'
  tensors copied into the live model), median of ``--switch-iters``;
* rebuild: what serving another task costs without switching: build the
  PETL model, load the base checkpoint file and the task's tensors
  (``build_tuned_model``), median of ``--rebuild-iters``;
* memory per registered task: the bytes of its tensors (exact) and the
  process's resident set growth per task (``--tasks`` registered).

And for the demo's size (``--mixed-bottleneck``), the throughput of a
batch whose images belong to ``--tasks`` tasks (round robin): one routed
forward (mixed) vs one forward per task (switch + predict its images) vs
the same batch under one task (what routing costs), timed in alternation.

Writes ``tasks.{json,md}`` to ``--out-dir`` with date, machine and
command (``--readme``: and into benchmarks/README.md). Time on a quiet machine:
other jobs scale times unevenly.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import shlex
import statistics
import sys
import tempfile
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIG = 'configs/demo/et-deformable-detr_mnv2_demo-target.py'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=CONFIG)
    p.add_argument('--bottlenecks', type=int, nargs='+',
                   default=[0, 32, 128, 512],
                   help='adapter bottlenecks (0: heads only)')
    p.add_argument('--num-prefix', type=int, default=32)
    p.add_argument('--tasks', type=int, default=4,
                   help='registered tasks (and tasks in a mixed batch)')
    p.add_argument('--mixed-bottleneck', type=int, default=128)
    p.add_argument('--batch', type=int, default=8,
                   help='images in the mixed batch')
    p.add_argument('--size', type=int, default=160, help='image side')
    p.add_argument('--switch-iters', type=int, default=50)
    p.add_argument('--rebuild-iters', type=int, default=3)
    p.add_argument('--iters', type=int, default=10,
                   help='timed forwards per variant')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--quick', action='store_true',
                   help='tiny settings to check that the tool works')
    p.add_argument('--out-dir', default=osp.join('benchmarks', 'results',
                                                 'cpu'))
    p.add_argument('--name', default='tasks')
    p.add_argument('--readme', action='store_true',
                   help='copy the tables into benchmarks/README.md (tasks-bench '
                   'markers)')
    args = p.parse_args(argv)
    if args.quick:
        args.bottlenecks, args.mixed_bottleneck = [0, 16], 16
        args.tasks, args.batch, args.size = 2, 2, 64
        args.switch_iters, args.rebuild_iters = 3, 1
        args.iters, args.warmup = 1, 0
    return args


def model_cfg(cfg, bottleneck: int, num_prefix: int):
    """The config's PETL model with adapters of ``bottleneck`` (and the
    prefixes), or heads only for 0."""
    model = cfg.model.copy()
    model['tuners'] = [] if bottleneck == 0 else [
        dict(type='ParallelAdapter', presets=['ffn'], bottleneck=bottleneck,
             scale=1.0),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=num_prefix)]
    return model


def random_tasks(model, count: int, seed: int = 0):
    """``count`` task states: the model's trainable tensors, perturbed."""
    gen = torch.Generator().manual_seed(seed)
    template = {k: v.detach() for k, v in model.tuner_state_dict().items()}
    return [{k: v + 0.01 * torch.randn(v.shape, generator=gen)
             for k, v in template.items()} for _ in range(count)]


def _median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def measure_size(cfg, bottleneck: int, args, tmp: str):
    """Switch vs rebuild + reload, memory per task, for one tuner size;
    returns the row and the bank (for the mixed-batch measurement)."""
    from mmengine.registry import MODELS

    from mmpetl.analysis.measure import rss_mib
    from mmpetl.apis import TaskBank
    from mmpetl.checkpoints import build_tuned_model
    from mmpetl.utils import load_checkpoint_file
    petl = model_cfg(cfg, bottleneck, args.num_prefix)
    model = MODELS.build(petl).eval()
    tasks = random_tasks(model, args.tasks, seed=bottleneck)
    base_path = osp.join(tmp, f'base_{bottleneck}.pth')
    tuner_keys = set(tasks[0])
    torch.save(dict(state_dict={k: v for k, v in model.state_dict().items()
                                if k not in tuner_keys}), base_path)
    bank = TaskBank(model)
    rss_before = rss_mib()
    for i, state in enumerate(tasks):
        bank.add(f'task{i}', state)
    rss_after = rss_mib()
    names = bank.names
    order = iter(range(10**9))

    def switch():
        bank.switch(names[next(order) % len(names)])

    switch()
    switch_ms = _median_ms(switch, args.switch_iters)

    def rebuild():
        built = build_tuned_model(petl, load_checkpoint_file(base_path),
                                  dict(state_dict=tasks[0], meta={}))
        del built

    rebuild_ms = _median_ms(rebuild, args.rebuild_iters)
    task = bank.get(names[0])
    total = sum(p.numel() for p in model.parameters())
    row = dict(
        bottleneck=bottleneck, num_prefix=args.num_prefix if bottleneck
        else 0, tensors=len(task.tensors),
        task_params=sum(v.numel() for v in task.tensors.values()),
        total_params=total, task_mib=task.nbytes / 2**20,
        switch_ms=switch_ms, rebuild_ms=rebuild_ms,
        rebuild_over_switch=rebuild_ms / max(switch_ms, 1e-9),
        rss_per_task_mib=(rss_after - rss_before) / len(tasks))
    return row, bank


def measure_mixed(bank, args):
    """Images/s of a batch of ``args.tasks`` tasks: routed vs per task vs
    one task for the whole batch."""
    from mmpetl.analysis.measure import interleaved_medians, synthetic_batch
    model = bank.model
    data = synthetic_batch('detection', args.batch, (args.size, args.size),
                           num_classes=5)
    data = model.data_preprocessor(data, False)
    inputs, samples = data['inputs'], data['data_samples']
    names = bank.names
    tasks = [names[i % len(names)] for i in range(args.batch)]

    def mixed():
        bank.predict(inputs, samples, tasks)

    def by_task():
        for name in names:
            index = [i for i, t in enumerate(tasks) if t == name]
            bank.predict(inputs[index], [samples[i] for i in index],
                         [name] * len(index))

    def one_task():
        bank.predict(inputs, samples, [names[0]] * len(tasks))

    with torch.no_grad():
        medians = interleaved_medians([mixed, by_task, one_task],
                                      args.warmup, args.iters,
                                      sync=lambda: None)
    ips = [1000.0 * args.batch / ms for ms in medians]
    return dict(bottleneck=args.mixed_bottleneck, batch=args.batch,
                tasks=len(names), size=args.size, mixed_ms=medians[0],
                by_task_ms=medians[1], one_task_ms=medians[2],
                mixed_ips=ips[0], by_task_ips=ips[1], one_task_ips=ips[2],
                mixed_over_by_task=ips[0] / ips[1],
                routing_cost=medians[0] / medians[2])


def markdown(header, rows, mixed) -> str:
    lines = ['# One base, many tasks: switching and mixed-task batches',
             '']
    lines += [f'- {k}: {v}' for k, v in header.items()]
    lines += ['', '## Switching vs rebuilding, memory per task', '',
              '| tuner | task params | task tensors | task MiB | switch ms '
              '| rebuild + reload ms | rebuild / switch | RSS per task MiB |',
              '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        tuner = 'heads only' if r['bottleneck'] == 0 else \
            f'adapters b={r["bottleneck"]} + prefixes l={r["num_prefix"]}'
        lines.append(
            f'| {tuner} | {r["task_params"]:,} | {r["tensors"]} | '
            f'{r["task_mib"]:.2f} | {r["switch_ms"]:.2f} | '
            f'{r["rebuild_ms"]:.0f} | {r["rebuild_over_switch"]:.0f}x | '
            f'{r["rss_per_task_mib"]:.2f} |')
    m = mixed
    lines += ['', f'## Mixed-task batch ({m["batch"]} images of '
              f'{m["size"]}px, {m["tasks"]} tasks round robin, adapters '
              f'b={m["bottleneck"]})', '',
              '| variant | ms per batch | images/s |', '|---|---:|---:|',
              f'| one routed forward (mixed) | {m["mixed_ms"]:.0f} | '
              f'{m["mixed_ips"]:.1f} |',
              f'| task by task (switch + forward per task) | '
              f'{m["by_task_ms"]:.0f} | {m["by_task_ips"]:.1f} |',
              f'| whole batch under one task (no routing) | '
              f'{m["one_task_ms"]:.0f} | {m["one_task_ips"]:.1f} |', '',
              f'Mixed throughput is {m["mixed_over_by_task"]:.2f}x task by '
              f'task; routing costs {m["routing_cost"]:.2f}x one task\'s '
              f'forward of the same batch.']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    import mmpetl  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from petl_benchmark import machine_description, software
    cfg = Config.fromfile(osp.join(ROOT, args.config)
                          if not osp.isabs(args.config) else args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    rows, mixed = [], None
    with tempfile.TemporaryDirectory(prefix='task_bench_') as tmp:
        for bottleneck in args.bottlenecks:
            row, bank = measure_size(cfg, bottleneck, args, tmp)
            rows.append(row)
            if bottleneck == args.mixed_bottleneck:
                mixed = measure_mixed(bank, args)
            del bank
        if mixed is None:
            _, bank = measure_size(cfg, args.mixed_bottleneck, args, tmp)
            mixed = measure_mixed(bank, args)
    header = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description('cpu'), software=software(),
        threads=torch.get_num_threads(),
        command='python ' + ' '.join(shlex.quote(a) for a in (
            [osp.relpath(sys.argv[0], ROOT)] + list(
                sys.argv[1:] if argv is None else argv))),
        setting=f'{args.config}, random weights, CPU fp32; switch: median '
        f'of {args.switch_iters}, rebuild: median of {args.rebuild_iters}, '
        f'batches: median of {args.iters} after {args.warmup} warm-up',
        note='--quick: tiny settings that check the tool works, not a '
        'measurement' if args.quick else
        'timed on a quiet machine (no other job running)')
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, args.name + '.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows, mixed=mixed), f, indent=1)
    text = markdown(header, rows, mixed)
    with open(osp.join(args.out_dir, args.name + '.md'), 'w') as f:
        f.write(text)
    if args.readme:
        from mmpetl.analysis.report import write_benchmark_section
        body = text.split('\n', 2)[2].replace('\n## ', '\n#### ')
        write_benchmark_section(ROOT, 'tasks-bench', body)
    print(text)
    return dict(header=header, rows=rows, mixed=mixed)


if __name__ == '__main__':
    main()
