"""Benchmark rows -> PNG charts (matplotlib, Agg)."""
from typing import Dict, List, Optional

from .targets import CKPT

__all__ = ['plot_chart', 'plot_ckpt_chart']


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
