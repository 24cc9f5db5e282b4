"""Post-processor whose image threshold is DistillClassifier's percentile threshold."""

from __future__ import annotations

import torch
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer


class PercentileThresholdPostProcessor(PostProcessor):
    """anomalib's post-processor, except that the image threshold is ``pl_module.model.percentile_threshold``.

    Normalisation statistics and the pixel threshold are computed on the validation set as usual; only the
    image threshold is replaced (after each validation epoch), so labelled anomalies are not needed for it.
    """

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the usual statistics, then install the percentile threshold when it is known."""
        super().on_validation_epoch_end(trainer, pl_module)
        threshold = getattr(getattr(pl_module, "model", None), "percentile_threshold", None)
        if isinstance(threshold, torch.Tensor) and torch.isfinite(threshold):
            self._image_threshold.copy_(threshold)
