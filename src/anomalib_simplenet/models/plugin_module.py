"""Hooks every plugin model shares: reliability guards, working INT8 quantization on export, and the hooks the
plugin's shared parts (pre-processor, DDP data callback) ask every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib.data import Batch
from lightning.pytorch import Callback

from anomalib_simplenet.components.distributed import DistributedDataCallback
from anomalib_simplenet.deploy import QuantizationFixesMixin
from anomalib_simplenet.reliability.guards import (
    check_checkpoint,
    check_checkpoint_file,
    check_export_ready,
    guard_callbacks,
)


class PluginModuleMixin(QuantizationFixesMixin):
    """Put first in a model's bases, ``class Model(PluginModuleMixin, AnomalibModule)``; the model stays a direct
    ``AnomalibModule`` subclass. A model with fitted state beyond the thresholds overrides :meth:`export_fitted`.
    """

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """anomalib's loader (``weights_only=True``); another model class's checkpoint is a clear error."""
        check_checkpoint_file(cls, checkpoint_path)  # before the constructor runs (it may fetch weights)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]

    def configure_callbacks(self) -> list[Callback]:
        """anomalib's component callbacks, the plugin's guards (divergence, checkpoints, resume, data) and, under
        DDP, unpadded evaluation shards (see :mod:`anomalib_simplenet.components.distributed`)."""
        return [*super().configure_callbacks(), *guard_callbacks(), DistributedDataCallback()]  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Clear error for a checkpoint of another model class or with other architecture arguments."""
        check_checkpoint(self, checkpoint)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]

    def needs_train_images(self, batch: Batch) -> bool:
        """Whether the pre-processor must transform this training batch's images ``(N, 3, H, W)``.

        Asked by :class:`~anomalib_simplenet.components.pre_processing.ExportablePreProcessor` before every
        training step. Default ``True``; a model that serves a batch's features from a cache answers ``False``
        for it, which saves the resize of images it would throw away.
        """
        del batch
        return True

    @property
    def fixed_train_shards(self) -> bool:
        """Whether, under DDP, each rank keeps the same training images for the whole fit.

        Read by :class:`~anomalib_simplenet.components.distributed.DistributedDataCallback` at ``setup``. Default
        ``False``: Lightning's sampler deals each rank other images every epoch. A model that keeps per-image
        state on its rank (a feature cache) answers ``True``.
        """
        return False

    def export_fitted(self) -> bool:
        """Whether the model's own fitted state (beyond anomalib's thresholds) exists; exports refuse otherwise."""
        return True

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        """anomalib's export, refused while the model has no thresholds (see ``check_export_ready``)."""
        check_export_ready(self, fitted=self.export_fitted())  # type: ignore[arg-type]
        return super().to_torch(*args, **kwargs)  # type: ignore[misc]

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """anomalib's export (also used by ``to_openvino``), refused while the model has no thresholds."""
        check_export_ready(self, fitted=self.export_fitted())  # type: ignore[arg-type]
        return super().to_onnx(*args, **kwargs)  # type: ignore[misc]
