"""Benchmarks: what a PETL method trains, stores, and costs per step."""
from .measure import deploy, measure_config, synthetic_batch
from .report import (check_targets, markdown_report, plot_chart,
                     with_ratios)

__all__ = ['measure_config', 'synthetic_batch', 'deploy', 'with_ratios',
           'check_targets', 'markdown_report', 'plot_chart']
