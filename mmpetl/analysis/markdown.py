"""Benchmark rows -> the Markdown page: provenance, one table per
architecture, the targets."""
from typing import Dict, List, Optional

__all__ = ['markdown_report']

_NOTES = [
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
]
_CPU_TARGETS_NOTE = (
    'The targets were set for an H100 at 800×1333, batch 2, except those '
    'of activation checkpointing (`+ckpt`) and UniPT vs heads-only, set '
    'for this CPU benchmark; on a CPU run the others are evaluated as an '
    'indication only.')


def _fmt(value, spec='.2f', suffix=''):
    if value is None or value != value:
        return '–'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    return f'{value:{spec}}{suffix}'


def _x(value):
    return _fmt(value, '.2f', '×')


def _provenance(header: Dict, cuda: bool) -> List[str]:
    """Title and the bullet list: where, when, how it was measured."""
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
    ] + _NOTES
    if header.get('deformable_attention'):
        lines.append(f"- deformable attention: "
                     f"{header['deformable_attention']}")
    if header.get('load'):
        lines.append(f"- machine load: {header['load']}")
    if header.get('not_measured'):
        lines.append(f"- not measured (no config): "
                     f"{', '.join(header['not_measured'])}")
    return lines + ['']


def _charts(chart: Optional[str], ckpt_chart: Optional[str]) -> List[str]:
    lines = []
    if chart:
        lines += [f'![memory and step time vs trainable %]({chart})', '']
    if ckpt_chart:
        lines += ['![peak memory vs step time, with and without activation '
                  f'checkpointing]({ckpt_chart})', '']
    return lines


def _columns(cuda: bool) -> List[str]:
    cols = ['method', 'trainable', 'trainable %', 'deploy params',
            'stored per task', 'peak mem MiB', 'mem ×', 'saved MiB',
            'step ms', 'step ×']
    if cuda:
        cols += ['GPU busy ms']
    return cols + ['infer ms', 'infer ×', 'merged infer ×',
                   'backbone autograd']


def _stored(r: Dict) -> str:
    """What one task stores: the tuner checkpoint (and how much smaller
    than a full one) or the full checkpoint."""
    if not r.get('is_petl'):
        return f"{_fmt(r['checkpoint_mib'])} MiB (full)"
    return (f"{_fmt(r['checkpoint_mib'])} MiB (tuner, "
            f"{_fmt(r.get('ckpt_shrink'), '.0f', '× smaller')})")


def _table_row(r: Dict, cuda: bool) -> str:
    if r.get('error'):
        return (f"| {r['method']} | failed: "
                f"{r['error'].splitlines()[-1][:150]} |")
    cells = [r['method'], f"{r['trainable_params']:,}",
             _fmt(r['trainable_pct'], '.2f', '%'),
             f"{r['deploy_params']:,}", _stored(r),
             _fmt(r['peak_mem_mib'], '.0f'), _x(r.get('mem_ratio')),
             _fmt(r.get('saved_total_mib'), '.0f'),
             _fmt(r['step_ms'], '.0f'), _x(r.get('step_ratio'))]
    if cuda:
        cells.append(_fmt(r.get('gpu_busy_ms'), '.0f'))
    cells += [_fmt(r['infer_ms'], '.0f'), _x(r.get('infer_ratio')),
              _x(r.get('infer_deployed_ratio')),
              _fmt(r.get('backbone_autograd'))]
    return '| ' + ' | '.join(cells) + ' |'


def _arch_tables(rows: List[Dict], cuda: bool) -> List[str]:
    """One table per architecture, in the order the rows name them."""
    cols = _columns(cuda)
    lines = []
    for arch in dict.fromkeys(r['arch'] for r in rows):
        lines += [f'## {arch}', '', '| ' + ' | '.join(cols) + ' |',
                  '|' + '|'.join(['---'] + ['---:'] * (len(cols) - 1)) + '|']
        lines += [_table_row(r, cuda) for r in rows if r['arch'] == arch]
        lines.append('')
    return lines


def _targets_table(checks: List[Dict], cuda: bool) -> List[str]:
    if not checks:
        return []
    lines = ['## Targets', '',
             '| target | arch | method | measured | limit | result |',
             '|---|---|---|---:|---:|---|']
    lines += [f"| {c['target']} | {c['arch']} | {c['method']} | "
              f"{_fmt(c['value'])} | {_fmt(c['limit'])} | "
              f"{'pass' if c['passed'] else '**FAIL**'} |" for c in checks]
    lines.append('')
    if not cuda:
        lines += [_CPU_TARGETS_NOTE, '']
    return lines


def markdown_report(rows: List[Dict], checks: List[Dict], header: Dict,
                    chart: Optional[str] = None,
                    ckpt_chart: Optional[str] = None) -> str:
    """The Markdown page: provenance, one table per architecture, targets.

    Args:
        rows (list[dict]): benchmark rows with ratios
            (:func:`mmpetl.analysis.targets.with_ratios`).
        checks (list[dict]): what
            :func:`mmpetl.analysis.targets.check_targets` returned.
        header (dict): ``device_kind``, ``date``, ``machine``,
            ``software``, ``command``, ``setting``; optionally
            ``deformable_attention``, ``load``, ``not_measured``.
        chart (str, optional): image path relative to the page
            (:func:`mmpetl.analysis.charts.plot_chart`).
        ckpt_chart (str, optional): the same for
            :func:`mmpetl.analysis.charts.plot_ckpt_chart`.

    Returns:
        str: the page.
    """
    cuda = any(r.get('device', '').startswith('cuda') for r in rows)
    lines = (_provenance(header, cuda) + _charts(chart, ckpt_chart) +
             _arch_tables(rows, cuda) + _targets_table(checks, cuda))
    return '\n'.join(lines)
