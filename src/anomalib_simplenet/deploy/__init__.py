"""Deployment helpers: INT8 quantization of exported models that works around anomalib 2.7's NNCF code path, and
the OpenVINO CPU precision config that keeps FP32 models in float32 on bfloat16-capable CPUs."""

from .mixin import QuantizationFixesMixin
from .precision import FP32_CPU_CONFIG, PRECISION_CHOICES, precision_config
from .quantization import accuracy_control_quantize, post_training_quantize, static_image_size

__all__ = [
    "FP32_CPU_CONFIG",
    "PRECISION_CHOICES",
    "QuantizationFixesMixin",
    "accuracy_control_quantize",
    "post_training_quantize",
    "precision_config",
    "static_image_size",
]
