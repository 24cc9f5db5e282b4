"""Experiment tools on top of :mod:`anomalib_simplenet.lab`: hyper-parameter sweeps over config variants
(``python -m anomalib_simplenet.experiments.sweep --help``) and the notebooks' helpers (``notebook``).

Imported on demand (``import anomalib_simplenet`` does not load it).
"""
