"""Speed, memory and parameter benchmark of PETL methods, side by side.

    python tools/analysis_tools/petl_benchmark.py               # CPU: small
    python tools/analysis_tools/petl_benchmark.py --device cuda # 800x1333
    python tools/analysis_tools/petl_benchmark.py --device cuda --amp bfloat16
    python tools/analysis_tools/petl_benchmark.py \\
        --archs deformable-detr_r50_coco --methods full-ft etta unipt
    python tools/analysis_tools/petl_benchmark.py --configs my_config.py ...
    python tools/analysis_tools/petl_benchmark.py \\
        --archs deformable-detr_r50_coco \\
        --methods etta etta+ckpt lora lora+ckpt
    python tools/analysis_tools/petl_benchmark.py --archs detr_r50_coco \\
        deformable-detr_r50_coco vit-b16_cifar100 dino-4scale_r50_coco

Every (architecture, method) pair is ``configs/methods/{method}_{arch}.py``
and runs in a process of its own (peak memory is per process); a method
``{method}+ckpt`` is the method with activation checkpointing of its
encoder and decoder layers (``configs/methods/etta+ckpt_*.py``). Beyond the
default architectures, ``--archs`` takes ``EXTRA_ARCHS`` (DINO 4-scale R50:
full-ft, etta, lora and adapter configs ship). With the default
``--methods``, a pair without a config is skipped and listed in the report
("not measured"); methods named with ``--methods`` must all exist, and
full fine-tuning (the reference of the ratios) always must. For each it
measures: trainable parameters (count, %), deploy-time parameters (LoRA
merged, prefix MLPs folded), the size of what must be stored per task
(tuner checkpoint, or the whole model for full fine-tuning), peak training
memory (CUDA ``max_memory_allocated``; on CPU peak RSS above the
post-import baseline), the median train step after warm-up (synchronised
on GPU, plus the profiler's GPU-busy time), and inference latency (before
and after merging). Ratios are to full fine-tuning of the same
architecture in the same run.

Writes ``speed_memory.json``, ``speed_memory.md``, ``speed_memory.png`` and
``speed_memory_ckpt.png`` (peak memory vs step time, every method, arrows
to the ``+ckpt`` rows) to ``--out-dir`` (default
``benchmarks/results/<cpu|gpu name>/``) with the date, machine and
command, and checks the targets of the benchmark issues (``--strict``:
exit 1 when one fails). ``--readme`` also copies the table
into benchmarks/README.md between the ``bench-<cpu|gpu>`` markers
(``bench-<cpu|gpu>-<name>`` with another ``--name``).
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

ARCHS = ['detr_r50_coco', 'deformable-detr_r50_coco', 'vit-b16_cifar100']
#: more architectures --archs takes (not run by default)
EXTRA_ARCHS = ['dino-4scale_r50_coco']
METHODS = ['full-ft', 'heads-only', 'bitfit', 'lora', 'lora+ckpt',
           'serial-adapter', 'prefix', 'etta', 'etta+ckpt', 'utuning',
           'unipt']
# (detection batch, detection HxW, classification batch, size)
DEFAULTS = dict(cpu=(1, (256, 256), 2, 224), cuda=(2, (800, 1333), 32, 224))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=ARCHS,
                   help=f'default {ARCHS}; also {EXTRA_ARCHS} (any arch '
                   f'with configs/methods/full-ft_<arch>.py)')
    p.add_argument('--methods', nargs='+',
                   help='method names of configs/methods/{method}_{arch}.py '
                   f'(default {METHODS}, pairs without a config skipped; '
                   'full-ft is always added: ratios need it)')
    p.add_argument('--configs', nargs='+',
                   help='explicit config files instead of --archs/--methods '
                   '(named {method}_{arch}.py for grouping; include a '
                   'full-ft one for ratios)')
    p.add_argument('--device', choices=['cpu', 'cuda'],
                   help='default: cuda when available')
    p.add_argument('--batch', type=int, help='detection images per step '
                   '(default: 1 on CPU, 2 on GPU)')
    p.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                   help='detection input size (default: 256 256 on CPU, '
                   '800 1333 on GPU)')
    p.add_argument('--cls-batch', type=int,
                   help='classification batch (default 2 CPU / 32 GPU)')
    p.add_argument('--cls-size', type=int, help='classification input size '
                   '(default 224)')
    p.add_argument('--amp', choices=['float16', 'bfloat16'],
                   help='mixed precision (GPU only)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=8,
                   help='timed train steps (median reported)')
    p.add_argument('--infer-iters', type=int, default=8,
                   help='timed inference calls of the tuned model and, in '
                   'alternation, of its base model (medians compared)')
    p.add_argument('--threads', type=int, help='CPU threads per process')
    p.add_argument('--msda-fallback', choices=['mmpetl', 'mmcv'],
                   default='mmpetl',
                   help="deformable attention off CUDA: mmpetl's op (keeps "
                   "its inputs for backward; the default) or MMCV's "
                   'multi_scale_deformable_attn_pytorch (keeps every '
                   'sample)')
    p.add_argument('--timeout', type=int, default=1200,
                   help='seconds per config before it is reported failed')
    p.add_argument('--out-dir', help='default benchmarks/results/<device>/')
    p.add_argument('--name', default='speed_memory',
                   help='file stem of the outputs')
    p.add_argument('--strict', action='store_true',
                   help='exit 1 when a target fails')
    p.add_argument('--readme', action='store_true',
                   help='write the table into benchmarks/README.md between '
                   'the bench-<cpu|gpu> markers (bench-<cpu|gpu>-<name> '
                   'with another --name)')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    p.add_argument('--json', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(args):
    device = args.device or ('cuda' if _cuda_available() else 'cpu')
    batch, size, cls_batch, cls_size = DEFAULTS[device]
    return dict(device=device, batch=args.batch or batch,
                size=tuple(args.input_size or size),
                cls_batch=args.cls_batch or cls_batch,
                cls_size=args.cls_size or cls_size, amp=args.amp)


def _cuda_available():
    import torch
    return torch.cuda.is_available()


# -- worker: one config in this process -----------------------------------
def run_worker(args):
    import mmpetl  # noqa: F401  (before mmdet: compat guards)
    from mmengine.config import Config

    from mmpetl.analysis.measure import measure_config
    from mmpetl.ops import msda_fallback
    import mmdet.models  # noqa: F401  (import cost outside the baseline)
    import mmpretrain.models  # noqa: F401
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings(args)
    cfg = Config.fromfile(args.worker)
    classification = 'mmpretrain' in str(cfg.get('default_scope', '')) or \
        'ImageClassifier' in str(cfg.model.get('type', '')) or \
        'ImageClassifier' in str(cfg.model.get('model', {}).get('type', ''))
    torch.manual_seed(0)
    with msda_fallback(args.msda_fallback):
        row = measure_config(
            cfg, device=s['device'],
            batch=s['cls_batch'] if classification else s['batch'],
            size=(s['cls_size'], ) * 2 if classification else s['size'],
            amp=s['amp'], warmup=args.warmup, iters=args.iters,
            infer_iters=args.infer_iters)
    with open(args.json, 'w') as f:
        json.dump(row, f)


# -- driver ----------------------------------------------------------------
def config_list(args):
    """``([(arch, method, path)], [skipped 'method_arch' pairs])``."""
    if args.configs:
        out = []
        for path in args.configs:
            stem = osp.splitext(osp.basename(path))[0]
            method, _, arch = stem.partition('_')
            out.append((arch or 'custom', method, path))
        return out, []
    methods = ['full-ft'] + [m for m in args.methods or METHODS
                             if m != 'full-ft']

    def path_of(method, arch):
        return osp.join(ROOT, 'configs', 'methods', f'{method}_{arch}.py')

    # a method named on the command line must exist for one of the archs
    # (a typo stops the run); pairs that do not ship are listed, as with
    # the default methods, and full fine-tuning (every ratio's reference)
    # must exist for each arch
    for method in args.methods or []:
        if not any(osp.exists(path_of(method, a)) for a in args.archs):
            raise SystemExit(
                f'no config for method {method!r} on any of {args.archs} '
                f'(configs/methods/{method}_<arch>.py): see configs/methods/ '
                f'for the available pairs')
    out, skipped = [], []
    for arch in args.archs:
        for method in methods:
            path = path_of(method, arch)
            if not osp.exists(path):
                if method != 'full-ft':
                    skipped.append(f'{method}_{arch}')
                    continue
                raise SystemExit(
                    f'no config {osp.relpath(path, ROOT)} for method '
                    f'{method!r} on {arch!r}: see configs/methods/ for the '
                    f'available pairs')
            out.append((arch, method, path))
    return out, skipped


def worker_argv(args, path, json_path):
    argv = [sys.executable, osp.abspath(__file__), '--worker', path,
            '--json', json_path, '--warmup', str(args.warmup), '--iters',
            str(args.iters), '--infer-iters', str(args.infer_iters)]
    s = settings(args)
    argv += ['--device', s['device'], '--batch', str(s['batch']),
             '--input-size', *map(str, s['size']), '--cls-batch',
             str(s['cls_batch']), '--cls-size', str(s['cls_size'])]
    if args.amp:
        argv += ['--amp', args.amp]
    if args.threads:
        argv += ['--threads', str(args.threads)]
    return argv + ['--msda-fallback', args.msda_fallback]


def run_one(args, arch, method, path):
    with tempfile.TemporaryDirectory() as tmp:
        json_path = osp.join(tmp, 'row.json')
        start = time.time()
        try:
            proc = subprocess.run(worker_argv(args, path, json_path),
                                  capture_output=True, text=True,
                                  timeout=args.timeout, cwd=ROOT)
            failed = proc.returncode != 0 or not osp.exists(json_path)
            error = (proc.stderr or proc.stdout)[-2000:] if failed else None
        except subprocess.TimeoutExpired:
            failed, error = True, f'timed out after {args.timeout} s'
        row = dict(arch=arch, method=method,
                   config=osp.relpath(path, ROOT),
                   wall_s=round(time.time() - start, 1))
        if failed:
            row['error'] = error or 'no result written'
        else:
            with open(json_path) as f:
                row.update(json.load(f))
    return row


def _msda_backend(device, fallback):
    import torch

    from mmpetl.ops import msda_backend, msda_fallback
    from mmpetl.patches import apply_patches
    apply_patches(['msda_fp32'])  # as in the workers (measure_config)
    with msda_fallback(fallback):
        return msda_backend(torch.device(device))


def machine_description(device):
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = re.findall(r'model name\s*:\s*(.*)', f.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f'{cpu}, {os.cpu_count()} cores'
    try:
        pages = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        text += f', {pages / 2**30:.0f} GiB RAM'
    except (ValueError, OSError):
        pass
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        text = (f'{props.name} ({props.total_memory / 2**30:.0f} GiB); '
                f'host: {text}')
    return text


def software():
    import mmcv
    import mmdet
    import mmengine
    import torch
    return (f'Python {platform.python_version()}, torch {torch.__version__}, '
            f'mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, '
            f'mmengine {mmengine.__version__}')


def readme_marker(kind, name):
    """The benchmarks page's section for a report: ``bench-<kind>`` for the
    default ``--name``, ``bench-<kind>-<name>`` for another one (a partial
    run then does not replace the full table)."""
    return f'bench-{kind}' if name == 'speed_memory' else \
        f'bench-{kind}-{name}'


def write_readme(markdown, kind, name):
    """Copy the report into benchmarks/README.md between its markers
    (:func:`readme_marker`)."""
    from mmpetl.analysis.report import write_benchmark_section
    body = markdown.split('\n', 2)[2]  # drop the page title
    body = body.replace(f']({name}', f'](results/{kind}/{name}')
    body = body.replace('\n# ', '\n#### ').replace('\n## ', '\n#### ')
    write_benchmark_section(ROOT, readme_marker(kind, name), body)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    import mmpetl  # noqa: F401
    from mmpetl.analysis.report import (check_targets, markdown_report,
                                        plot_chart, plot_ckpt_chart,
                                        with_ratios)
    s = settings(args)
    if s['amp'] and s['device'] != 'cuda':
        raise SystemExit('--amp needs --device cuda (MMEngine\'s '
                         'AmpOptimWrapper runs on GPUs only)')
    kind = 'cpu' if s['device'] == 'cpu' else 'gpu'
    out_dir = args.out_dir or osp.join(ROOT, 'benchmarks', 'results', kind)
    os.makedirs(out_dir, exist_ok=True)
    configs, skipped = config_list(args)
    load_start = os.getloadavg()[0]
    if skipped:
        print(f'[benchmark] not measured (no config): {", ".join(skipped)}',
              flush=True)
    rows = []
    for arch, method, path in configs:
        print(f'[benchmark] {arch} / {method} ...', flush=True)
        row = run_one(args, arch, method, path)
        if row.get('error'):
            print(f'[benchmark]   FAILED: {row["error"].splitlines()[-1]}',
                  flush=True)
        else:
            print(f"[benchmark]   {row['trainable_pct']:.2f}% trainable, "
                  f"peak {row['peak_mem_mib']:.0f} MiB, step "
                  f"{row['step_ms']:.0f} ms, infer {row['infer_ms']:.0f} ms "
                  f"({row['wall_s']} s)", flush=True)
        rows.append(row)
    rows = with_ratios(rows)
    checks = check_targets(rows)
    size = 'x'.join(map(str, s['size']))
    header = dict(
        device_kind='GPU' if s['device'] == 'cuda' else 'CPU',
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        machine=machine_description(s['device']), software=software(),
        command='python tools/analysis_tools/petl_benchmark.py ' + ' '.join(
            shlex.quote(a) for a in (argv if argv is not None else
                                     sys.argv[1:])),
        setting=(f"{s['device']}, {s['amp'] or 'fp32'}, detection batch "
                 f"{s['batch']} at {size}, classification batch "
                 f"{s['cls_batch']} at {s['cls_size']}, {args.warmup} "
                 f"warm-up + {args.iters} timed steps, random weights and "
                 f"synthetic data (speed and memory do not depend on them)"),
        not_measured=skipped,
        deformable_attention=_msda_backend(s['device'], args.msda_fallback),
        load=(f'1-min load average {load_start:.2f} at the start, '
              f'{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} '
              f'CPUs (one benchmark process at a time; compare it with '
              f'the CPU count: a second job on the machine skews ratios)'))
    chart = plot_chart(rows, osp.join(out_dir, f'{args.name}.png'),
                       title=f"{header['device_kind']}: {s['device']}, "
                       f"{s['amp'] or 'fp32'}, {header['date']}")
    ckpt_chart = plot_ckpt_chart(
        rows, osp.join(out_dir, f'{args.name}_ckpt.png'),
        title=f"peak memory vs step time, with and without activation "
        f"checkpointing\n{header['device_kind']}, {s['amp'] or 'fp32'}, "
        f"{header['date']}")
    markdown = markdown_report(
        rows, checks, header, chart=osp.basename(chart) if chart else None,
        ckpt_chart=osp.basename(ckpt_chart) if ckpt_chart else None)
    with open(osp.join(out_dir, f'{args.name}.md'), 'w') as f:
        f.write(markdown)
    with open(osp.join(out_dir, f'{args.name}.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows, targets=checks), f,
                  indent=1)
    if args.readme:
        write_readme(markdown, kind, args.name)
    print(markdown)
    failed = [r for r in rows if r.get('error')]
    if failed:
        print(f'[benchmark] {len(failed)} config(s) failed: ' + ', '.join(
            f"{r['method']}_{r['arch']}" for r in failed), file=sys.stderr)
        return 1
    if args.strict and not all(c['passed'] for c in checks):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
