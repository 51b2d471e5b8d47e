"""Benchmarks: what a PETL method trains, stores, and costs per step."""
from .measure import (deploy, measure_config, model_num_classes, model_task,
                      synthetic_batch)
from .report import (check_targets, markdown_report, plot_chart,
                     with_ratios)

__all__ = ['measure_config', 'synthetic_batch', 'model_task',
           'model_num_classes', 'deploy', 'with_ratios',
           'check_targets', 'markdown_report', 'plot_chart']
