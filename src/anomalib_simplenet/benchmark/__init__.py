"""Deployment benchmark: torch FP32 against OpenVINO FP32/FP16/INT8/INT8_PTQ/INT8_ACQ on one test set.

Run ``python -m anomalib_simplenet.benchmark --help``. A thin layer on :mod:`anomalib_simplenet.lab`: ``run``
(data → model → every variant exported and measured → report) and ``cli``.
"""

from .run import BenchmarkConfig, run_benchmark

__all__ = ["BenchmarkConfig", "run_benchmark"]
