"""OpenVINO CPU precision: what an "FP32" model computes in depends on the CPU, unless the caller says so.

On CPUs with bfloat16 support (AVX512_BF16 or AMX: recent Xeons), OpenVINO's CPU plugin runs FP32 and FP16 IRs in
bfloat16 by default (``INFERENCE_PRECISION_HINT`` = ``bf16``). Faster, but the scores move: on such a CPU our
normalised scores differed from torch by up to ~2e-2 instead of ~1e-6, enough to flip labels near the threshold.
The hint cannot be stored in the IR (OpenVINO 2026.4 ignores it in the model's ``runtime_options``), so the caller
passes it when compiling: ``OpenVINOInferencer(path, device="CPU", config=FP32_CPU_CONFIG)``.
"""

from __future__ import annotations

FP32_CPU_CONFIG: dict[str, str] = {"INFERENCE_PRECISION_HINT": "f32"}
"""Compile config for CPU inference in float32 (numerically as the torch model) on every CPU."""

PRECISION_CHOICES = ("f32", "bf16", "auto")
"""``--ov-precision`` values of the benchmark: ``auto`` keeps OpenVINO's default for the CPU."""


def precision_config(precision: str) -> dict[str, str]:
    """OpenVINO CPU compile config for ``precision`` (one of :data:`PRECISION_CHOICES`)."""
    if precision not in PRECISION_CHOICES:
        msg = f"precision must be one of {PRECISION_CHOICES}, got {precision!r}"
        raise ValueError(msg)
    return {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
