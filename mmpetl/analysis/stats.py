"""Per-seed runs -> one summary row per method (accuracy benchmarks)."""
import statistics
from typing import Callable, Dict, List, Sequence

from .targets import REFERENCE

__all__ = ['seed_summary']


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
