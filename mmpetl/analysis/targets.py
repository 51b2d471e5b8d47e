"""Benchmark rows -> ratios to full fine-tuning and the issue's targets.

A row is one (architecture, method) measurement from
:func:`mmpetl.analysis.measure.measure_config` plus ``arch``, ``method``
and ``config``. Ratios are taken against the ``full-ft`` row of the same
architecture *in the same run* (the machines are noisy: numbers from
different runs are not compared).
"""
from typing import Dict, List, Optional

__all__ = ['with_ratios', 'check_targets', 'REFERENCE', 'CKPT']

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
