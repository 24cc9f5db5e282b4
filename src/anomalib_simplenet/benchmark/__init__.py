"""Deployment benchmark: torch FP32 against OpenVINO FP32/FP16/INT8/INT8_PTQ/INT8_ACQ on one test set.

``python -m anomalib_simplenet.benchmark --help``; a thin layer on :mod:`anomalib_simplenet.lab`.
"""

from .run import BenchmarkConfig, main, run_benchmark

__all__ = ["BenchmarkConfig", "main", "run_benchmark"]
