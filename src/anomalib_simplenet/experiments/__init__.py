"""Experiment tools: loss history, hyper-parameter sweeps over config variants, comparison reports.

Imported on demand (``import anomalib_simplenet`` does not load it). The sweep is a command:
``python -m anomalib_simplenet.experiments.sweep --help``.
"""

from .history import LossHistory, loss_figure, read_history_csv
from .report import RunResult, markdown_table, metric_figure

__all__ = ["LossHistory", "RunResult", "loss_figure", "markdown_table", "metric_figure", "read_history_csv"]
