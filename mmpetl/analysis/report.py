"""Benchmark rows -> ratios to full fine-tuning, target checks, Markdown, PNG.

A row is one (architecture, method) measurement from
:func:`mmpetl.analysis.measure.measure_config` plus ``arch``, ``method``
and ``config``. Ratios are taken against the ``full-ft`` row of the same
architecture *in the same run* (the machines are noisy: numbers from
different runs are not compared).
"""
import os.path as osp
import statistics
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ['with_ratios', 'check_targets', 'markdown_report', 'plot_chart',
           'plot_ckpt_chart', 'REFERENCE', 'CKPT', 'write_between_markers',
           'seed_summary', 'BENCHMARK_PAGE', 'write_benchmark_section']

REFERENCE = 'full-ft'
#: suffix of a method run with activation checkpointing (``etta+ckpt``)
CKPT = '+ckpt'


def _ratio(a, b) -> Optional[float]:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return a / b


def with_ratios(rows: List[Dict]) -> List[Dict]:
    """Add ``*_ratio`` fields (row / full fine-tuning of the same arch)."""
    refs = {r['arch']: r for r in rows
            if r['method'] == REFERENCE and not r.get('error')}
    out = []
    for row in rows:
        row = dict(row)
        ref = refs.get(row['arch'])
        if ref is not None and not row.get('error'):
            row['mem_ratio'] = _ratio(row['peak_mem_mib'],
                                      ref['peak_mem_mib'])
            row['step_ratio'] = _ratio(row['step_ms'], ref['step_ms'])
            if row.get('gpu_busy_ms') is not None:
                row['gpu_busy_ratio'] = _ratio(row['gpu_busy_ms'],
                                               ref['gpu_busy_ms'])
            # PETL rows timed their base model beside them (same process,
            # alternating); otherwise full fine-tuning's run is the base
            base = row.get('infer_base_ms') or ref['infer_ms']
            row['infer_ratio'] = _ratio(row['infer_ms'], base)
            row['infer_deployed_ratio'] = _ratio(
                row.get('infer_deployed_ms'),
                row.get('infer_deployed_base_ms') or base)
            row['ckpt_shrink'] = _ratio(ref['checkpoint_mib'],
                                        row['checkpoint_mib'])
        out.append(row)
    return out


def _target(name, row, value, limit, passed, note=''):
    return dict(target=name, arch=row['arch'], method=row['method'],
                value=value, limit=limit, passed=passed, note=note)


def check_targets(rows: List[Dict]) -> List[Dict]:
    """The issue's targets that this run's rows can answer.

    Values are ratios to full fine-tuning measured in the same run (UniPT's
    memory also to heads-only's). The targets were set for a GPU (H100,
    R50, batch 2, 800x1333), the activation-checkpointing ones on this
    CPU benchmark; all are evaluated on either, the GPU ones on a CPU run
    as an indication.
    """
    checks = []
    heads_only = {r['arch']: r for r in rows
                  if r['method'] == 'heads-only' and not r.get('error')}
    for row in rows:
        if row.get('error') or row['method'] == REFERENCE:
            continue
        method, arch = row['method'], row['arch']
        amp = row.get('amp', 'fp32') != 'fp32'
        if row.get('is_petl'):
            checks.append(_target(
                'trainable <= 10%', row, row['trainable_pct'], 10.0,
                row['trainable_pct'] <= 10.0))
            if row.get('ckpt_shrink') is not None:
                checks.append(_target(
                    'tuner checkpoint >= 10x smaller than full', row,
                    row['ckpt_shrink'], 10.0, row['ckpt_shrink'] >= 10.0))
            if row.get('infer_ratio') is not None:
                checks.append(_target(
                    'inference latency <= 1.10x base', row,
                    row['infer_ratio'], 1.10, row['infer_ratio'] <= 1.10))
            if method == 'lora' and row.get('infer_deployed_ratio'):
                checks.append(_target(
                    'inference after merging LoRA <= 1.02x base', row,
                    row['infer_deployed_ratio'], 1.02,
                    row['infer_deployed_ratio'] <= 1.02))
        if method == 'etta' and 'deformable' in arch:
            limit = 0.35 if amp else 0.5
            if row.get('mem_ratio') is not None:
                checks.append(_target(
                    f'ET-Deformable-DETR peak memory <= {limit}x full FT',
                    row, row['mem_ratio'], limit, row['mem_ratio'] <= limit))
            if row.get('step_ratio') is not None:
                checks.append(_target(
                    'ET-Deformable-DETR step time <= 0.85x full FT', row,
                    row['step_ratio'], 0.85, row['step_ratio'] <= 0.85))
            if row.get('backbone_autograd') is not None:
                checks.append(_target(
                    'frozen backbone runs without autograd', row,
                    row['backbone_autograd'], False,
                    not row['backbone_autograd']))
        if method == 'etta' + CKPT and 'deformable' in arch:
            if row.get('mem_ratio') is not None:
                checks.append(_target(
                    'ET-Deformable-DETR+ckpt peak memory <= 0.40x full FT',
                    row, row['mem_ratio'], 0.40, row['mem_ratio'] <= 0.40))
            if row.get('step_ratio') is not None:
                checks.append(_target(
                    'ET-Deformable-DETR+ckpt step time <= 1.0x full FT',
                    row, row['step_ratio'], 1.0, row['step_ratio'] <= 1.0))
        if method == 'unipt' and row.get('mem_ratio') is not None:
            checks.append(_target('UniPT peak memory <= 0.2x full FT', row,
                                  row['mem_ratio'], 0.2,
                                  row['mem_ratio'] <= 0.2))
        if method == 'unipt' and arch in heads_only:
            ratio = _ratio(row['peak_mem_mib'],
                           heads_only[arch]['peak_mem_mib'])
            if ratio is not None:
                checks.append(_target(
                    'UniPT peak memory <= 1.05x heads-only', row, ratio,
                    1.05, ratio <= 1.05))
    return checks


def _fmt(value, spec='.2f', suffix=''):
    if value is None or value != value:
        return '–'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    return f'{value:{spec}}{suffix}'


def _x(value):
    return _fmt(value, '.2f', '×')


def markdown_report(rows: List[Dict], checks: List[Dict], header: Dict,
                    chart: Optional[str] = None,
                    ckpt_chart: Optional[str] = None) -> str:
    """The Markdown page: provenance, one table per architecture, targets.

    ``chart`` and ``ckpt_chart`` are image paths relative to the page
    (:func:`plot_chart`, :func:`plot_ckpt_chart`)."""
    cuda = any(r.get('device', '').startswith('cuda') for r in rows)
    mem_name = ('peak CUDA memory (max_memory_allocated)' if cuda else
                'peak bytes of live CPU tensors in a train step (tensors '
                'alive before it + profiler allocations minus frees; the '
                'JSON also has peak RSS)')
    lines = [
        f"# mmpetl speed / memory benchmark ({header['device_kind']})", '',
        f"- date: {header['date']}",
        f"- machine: {header['machine']}",
        f"- software: {header['software']}",
        f"- command: `{header['command']}`",
        f"- setting: {header['setting']}",
        f'- memory: {mem_name}; step: median train step after warm-up'
        f'{" (CUDA-synchronised)" if cuda else ""}; inference: median '
        f'`test_step` (batch as above).',
        '- ratios (×) are to full fine-tuning of the same architecture, '
        'measured in this run; inference ratios are to the base model '
        '(the config\'s model without tuners), timed in the same process '
        'in alternation with the tuned one (before and after merging).',
        '- saved MiB: what autograd keeps for backward in one training '
        'forward (every saved storage once, weights excluded), plus the '
        'inputs that activation checkpointing holds; per module in the '
        'JSON (`saved_by_module_mib`). `+ckpt`: the method with its encoder '
        'and decoder layers checkpointed (recomputed in backward; their '
        'forward keeps dropout masks and deformable attention outputs for '
        'the recomputation).',
        '',
    ]
    if header.get('deformable_attention'):
        lines[-1:-1] = [f"- deformable attention: "
                        f"{header['deformable_attention']}"]
    if header.get('load'):
        lines[-1:-1] = [f"- machine load: {header['load']}"]
    if header.get('not_measured'):
        lines[-1:-1] = [f"- not measured (no config): "
                        f"{', '.join(header['not_measured'])}"]
    if chart:
        lines += [f'![memory and step time vs trainable %]({chart})', '']
    if ckpt_chart:
        lines += ['![peak memory vs step time, with and without activation '
                  f'checkpointing]({ckpt_chart})', '']
    archs = []
    for r in rows:
        if r['arch'] not in archs:
            archs.append(r['arch'])
    cols = ['method', 'trainable', 'trainable %', 'deploy params',
            'stored per task', 'peak mem MiB', 'mem ×', 'saved MiB',
            'step ms', 'step ×']
    if cuda:
        cols += ['GPU busy ms']
    cols += ['infer ms', 'infer ×', 'merged infer ×', 'backbone autograd']
    for arch in archs:
        lines += [f'## {arch}', '', '| ' + ' | '.join(cols) + ' |',
                  '|' + '|'.join(['---'] + ['---:'] * (len(cols) - 1)) + '|']
        for r in [r for r in rows if r['arch'] == arch]:
            if r.get('error'):
                lines.append(f"| {r['method']} | failed: "
                             f"{r['error'].splitlines()[-1][:150]} |")
                continue
            stored = (f"{_fmt(r['checkpoint_mib'])} MiB "
                      f"({'tuner' if r.get('is_petl') else 'full'}"
                      f"{', ' + _fmt(r.get('ckpt_shrink'), '.0f', '× smaller') if r.get('is_petl') else ''})")  # noqa: E501
            cells = [r['method'], f"{r['trainable_params']:,}",
                     _fmt(r['trainable_pct'], '.2f', '%'),
                     f"{r['deploy_params']:,}", stored,
                     _fmt(r['peak_mem_mib'], '.0f'), _x(r.get('mem_ratio')),
                     _fmt(r.get('saved_total_mib'), '.0f'),
                     _fmt(r['step_ms'], '.0f'), _x(r.get('step_ratio'))]
            if cuda:
                cells.append(_fmt(r.get('gpu_busy_ms'), '.0f'))
            cells += [_fmt(r['infer_ms'], '.0f'), _x(r.get('infer_ratio')),
                      _x(r.get('infer_deployed_ratio')),
                      _fmt(r.get('backbone_autograd'))]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    if checks:
        lines += ['## Targets', '',
                  '| target | arch | method | measured | limit | result |',
                  '|---|---|---|---:|---:|---|']
        for c in checks:
            value = c['value']
            shown = _fmt(value) if not isinstance(value, bool) else \
                _fmt(value)
            limit = _fmt(c['limit']) if not isinstance(c['limit'], bool) \
                else _fmt(c['limit'])
            lines.append(f"| {c['target']} | {c['arch']} | {c['method']} | "
                         f"{shown} | {limit} | "
                         f"{'pass' if c['passed'] else '**FAIL**'} |")
        lines.append('')
        if not cuda:
            lines += ['The targets were set for an H100 at 800×1333, batch 2, '
                      'except those of activation checkpointing (`+ckpt`) '
                      'and UniPT vs heads-only, set for this CPU '
                      'benchmark; on a CPU run the others are evaluated as '
                      'an indication only.', '']
    return '\n'.join(lines)


def plot_chart(rows: List[Dict], path: str,
               title: str = 'mmpetl benchmark') -> Optional[str]:
    """Memory and step time (× full fine-tuning) vs trainable %."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    good = [r for r in rows if not r.get('error') and
            r.get('mem_ratio') is not None]
    if not good:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = ['o', 's', '^', 'D', 'v']
    archs = list(dict.fromkeys(r['arch'] for r in good))
    for ax, key, label in ((axes[0], 'mem_ratio', 'peak memory (× full FT)'),
                           (axes[1], 'step_ratio',
                            'train step time (× full FT)')):
        for i, arch in enumerate(archs):
            pts = [r for r in good if r['arch'] == arch]
            ax.scatter([max(r['trainable_pct'], 1e-3) for r in pts],
                       [r[key] for r in pts], marker=markers[i % 5],
                       label=arch, s=45)
            for r in pts:
                ax.annotate(r['method'], (max(r['trainable_pct'], 1e-3),
                                          r[key]), fontsize=7,
                            xytext=(3, 3), textcoords='offset points')
        ax.set_xscale('log')
        ax.set_xlabel('trainable parameters (% of the model, log scale)')
        ax.set_ylabel(label)
        ax.axhline(1.0, color='grey', lw=0.6, ls='--')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ckpt_chart(rows: List[Dict], path: str,
                    title: str = 'activation checkpointing'
                    ) -> Optional[str]:
    """Peak memory vs train step time (both × full FT), one panel per
    architecture: every method, and an arrow from each method to its
    ``+ckpt`` row (the same method with activation checkpointing).

    Returns:
        str | None: ``path``, or None when no row has ratios.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    good = [r for r in rows if not r.get('error') and
            r.get('mem_ratio') is not None and
            r.get('step_ratio') is not None]
    if not good:
        return None
    archs = list(dict.fromkeys(r['arch'] for r in good))
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 5.6),
                             squeeze=False)
    for ax, arch in zip(axes[0], archs):
        pts = {r['method']: r for r in good if r['arch'] == arch}
        for method, r in pts.items():
            ckpt = method.endswith(CKPT)
            ax.scatter(r['step_ratio'], r['mem_ratio'], s=45,
                       marker='*' if ckpt else 'o',
                       color='tab:red' if ckpt else 'tab:blue',
                       zorder=3)
            ax.annotate(method, (r['step_ratio'], r['mem_ratio']),
                        fontsize=7, xytext=(3, 3),
                        textcoords='offset points')
            base = pts.get(method[:-len(CKPT)]) if ckpt else None
            if base is not None:
                ax.annotate('', xy=(r['step_ratio'], r['mem_ratio']),
                            xytext=(base['step_ratio'], base['mem_ratio']),
                            arrowprops=dict(arrowstyle='->',
                                            color='tab:red', lw=1.0))
        ax.axhline(1.0, color='grey', lw=0.6, ls='--')
        ax.axvline(1.0, color='grey', lw=0.6, ls='--')
        ax.set_xlabel('train step time (× full FT)')
        ax.set_ylabel('peak training memory (× full FT)')
        ax.set_title(arch, fontsize=9)
        ax.set_xlim(0, 1.1 * max(1.0, *(r['step_ratio']
                                        for r in pts.values())))
        ax.set_ylim(0, 1.1 * max(1.0, *(r['mem_ratio']
                                        for r in pts.values())))
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker='o', ls='', color='tab:blue',
                          label='method'),
               plt.Line2D([], [], marker='*', ls='', color='tab:red',
                          label='+ckpt: the method with activation '
                          'checkpointing (arrow from the method)')]
    fig.legend(handles=handles, fontsize=8, loc='lower center', ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: where benchmark tools copy their tables (``--readme``)
BENCHMARK_PAGE = osp.join('benchmarks', 'README.md')


def write_benchmark_section(root: str, name: str, body: str) -> None:
    """Write ``body`` between the ``name`` markers of the benchmarks page
    (``<root>/benchmarks/README.md``); image links relative to
    ``benchmarks/`` as the tools write them."""
    write_between_markers(osp.join(root, BENCHMARK_PAGE), name, body)


def write_between_markers(path: str, name: str, body: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` in ``path`` (the README) by ``body``."""
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f'{path} has no {start} ... {end} markers')
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, 'w') as f:
        f.write(head + start + '\n' + body.strip() + '\n' + end + tail)


def seed_summary(runs: Sequence[Dict], metric: str,
                 extra: Callable[[List[Dict]], Dict]) -> List[Dict]:
    """One row per method of per-seed runs (accuracy benchmarks).

    Each row has the method, its seeds, the per-seed ``metric`` values
    (``values``), their mean, sample std (NaN for one seed), min and max,
    ``delta_vs_full`` (mean minus full fine-tuning's mean, None without a
    ``full-ft`` method), plus what ``extra(runs_of_the_method)`` returns.
    """
    rows = []
    for method in dict.fromkeys(r['method'] for r in runs):
        mine = [r for r in runs if r['method'] == method]
        values = [r[metric] for r in mine]
        row = dict(method=method, seeds=[r['seed'] for r in mine],
                   values=values, mean=statistics.mean(values),
                   std=statistics.stdev(values) if len(values) > 1
                   else float('nan'), min=min(values), max=max(values))
        row.update(extra(mine))
        rows.append(row)
    ref = next((r for r in rows if r['method'] == REFERENCE), None)
    for row in rows:
        row['delta_vs_full'] = row['mean'] - ref['mean'] if ref else None
    return rows
