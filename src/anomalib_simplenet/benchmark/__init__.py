"""Deployment benchmark: torch FP32 against OpenVINO FP32/FP16/INT8/INT8_PTQ/INT8_ACQ on one test set.

Run ``python -m anomalib_simplenet.benchmark --help``. Modules: ``variants`` (what is compared), ``export``,
``runtime`` (running an exported file), ``measure``, ``report`` (table files), ``plot``, ``run``, ``cli``.
"""

from .run import BenchmarkConfig, run_benchmark

__all__ = ["BenchmarkConfig", "run_benchmark"]
