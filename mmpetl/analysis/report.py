"""Benchmark reports: re-exports of the modules that make them.

* :mod:`~mmpetl.analysis.targets`: ratios to full fine-tuning, the
  issue's targets;
* :mod:`~mmpetl.analysis.markdown`: the Markdown page;
* :mod:`~mmpetl.analysis.charts`: the PNG charts;
* :mod:`~mmpetl.analysis.readme_markers`: sections between README markers;
* :mod:`~mmpetl.analysis.stats`: per-seed summaries.
"""
from .charts import plot_chart, plot_ckpt_chart
from .markdown import markdown_report
from .readme_markers import (BENCHMARK_PAGE, write_benchmark_section,
                             write_between_markers)
from .stats import seed_summary
from .targets import CKPT, REFERENCE, check_targets, with_ratios

__all__ = ['with_ratios', 'check_targets', 'markdown_report', 'plot_chart',
           'plot_ckpt_chart', 'REFERENCE', 'CKPT', 'write_between_markers',
           'seed_summary', 'BENCHMARK_PAGE', 'write_benchmark_section']
