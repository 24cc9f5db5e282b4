"""Mixin that routes anomalib's ``to_openvino`` INT8_PTQ / INT8_ACQ steps to :mod:`.quantization`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .quantization import accuracy_control_quantize, post_training_quantize

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule


class QuantizationFixesMixin:
    """Put before ``AnomalibModule`` in a model's bases: ``Engine.export(..., compression_type=INT8_PTQ|INT8_ACQ)``
    then calibrates on images fitted to a static ``input_size`` and runs a working accuracy-controlled PTQ."""

    @staticmethod
    def _post_training_quantization_ov(model: ov.Model, datamodule: AnomalibDataModule | None = None) -> ov.Model:
        return post_training_quantize(model, datamodule)

    @staticmethod
    def _accuracy_control_quantization_ov(
        model: ov.Model,
        datamodule: AnomalibDataModule | None = None,
        metric: Any = None,
        task: Any = None,
        max_drop: float = 0.01,
    ) -> ov.Model:
        del task
        return accuracy_control_quantize(model, datamodule, metric, max_drop)
