"""Plain-text tables of what was injected and what trains."""
from collections import OrderedDict
from typing import List, Sequence

import torch.nn as nn

from mmpetl.tuners import BaseTuner, iter_tuners

__all__ = ['format_table', 'injection_table', 'parameter_groups_table',
           'count_trainable']


def format_table(header: Sequence[str], rows: List[Sequence]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return '  '.join(c.rjust(w) if c.replace(',', '').replace(
            '.', '').replace('%', '').isdigit() else c.ljust(w)
                         for c, w in zip(r, widths)).rstrip()

    rule = '  '.join('-' * w for w in widths)
    return '\n'.join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def count_trainable(model: nn.Module):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def injection_table(records, model: nn.Module) -> str:
    """module | tuner | hyper-parameters | params, then the totals."""
    rows = [[r.name, type(r.tuner).__name__,
             ' '.join(f'{k}={v}' for k, v in r.tuner.describe().items()),
             f'{r.num_params:,}'] for r in records]
    tuner_params = sum(r.num_params for r in records)
    deploy = sum(r.tuner.num_deploy_params() for r in records)
    trainable, total = count_trainable(model)
    base = total - tuner_params
    text = format_table(['module', 'tuner', 'config', 'params'], rows)
    text += (f'\n\ntuners: {len(records)} modules, {tuner_params:,} params '
             f'({deploy:,} at deploy)'
             f'\nbase model: {base:,} params'
             f'\ntrainable: {trainable:,} of {total:,} '
             f'({100.0 * trainable / max(total, 1):.2f}%)'
             f'\ntrainable beyond tuners: {trainable - tuner_params:,}')
    return text


def parameter_groups_table(model: nn.Module) -> str:
    """Params per top-level module (and per tuner kind), trainable or not."""
    tuner_ids = {}
    for _, module in iter_tuners(model):
        for p in module.parameters():
            tuner_ids[id(p)] = f'tuners:{type(module).__name__}'
    groups = OrderedDict()
    total = 0
    for name, p in model.named_parameters():
        key = tuner_ids.get(id(p), name.split('.', 1)[0])
        entry = groups.setdefault(key, [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if p.requires_grad else 0
        total += p.numel()
    rows = []
    for key, (count, train) in groups.items():
        state = 'trainable' if train == count else (
            'frozen' if train == 0 else f'partly ({train:,} trainable)')
        rows.append([key, f'{count:,}', f'{100.0 * count / total:.2f}%',
                     state])
    trainable, _ = count_trainable(model)
    rows.append(['TOTAL trainable', f'{trainable:,}',
                 f'{100.0 * trainable / total:.2f}%', ''])
    return format_table(['group', '#params', '% of total', 'state'], rows)
