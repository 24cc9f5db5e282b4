"""Lightning module of the teacher-feature reference detector: one pass over the training images fits it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_simplenet.components.pre_processing import as_size, imagenet_pre_processor
from anomalib_simplenet.deploy import QuantizationFixesMixin

from .torch_model import TeacherMahalanobisModel


class TeacherMahalanobis(QuantizationFixesMixin, AnomalibModule):
    """The frozen teacher as a one-class detector (see :mod:`.torch_model`); one pass over the training images.

    Args:
        backbone: timm name of the teacher (the study's ``--teacher``).
        levels: ``feature_info`` indices of the scored maps (``(2, 3)``: strides 8 and 16).
        image_size: model input size; the default pre-processor resizes to it and normalises (ImageNet).
        pre_trained: ImageNet weights; ``False`` only for plumbing tests.
        image_score: ``"map_max"`` or ``"embedding"``.
        anomaly_map_sigma: σ (pixels) of the map smoothing.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        levels: Sequence[int] = (2, 3),
        image_size: int | tuple[int, int] = 256,
        pre_trained: bool = True,
        image_score: str = "map_max",
        anomaly_map_sigma: float = 4.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: bool = True,
        visualizer: bool = False,
    ) -> None:
        if pre_processor is True:
            pre_processor = imagenet_pre_processor(as_size(image_size))
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )
        self.model = TeacherMahalanobisModel(
            backbone, list(levels), as_size(image_size), pre_trained, image_score, anomaly_map_sigma
        )
        self._features: list[list[torch.Tensor]] = []

    @staticmethod
    def configure_optimizers() -> None:
        """Nothing is trained."""
        return

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Collect the batch's feature maps (the Gaussians are fitted at the end of the epoch)."""
        del args, kwargs
        self._features.append([f.cpu() for f in self.model.features(batch.image)])
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def on_validation_start(self) -> None:
        """Lightning validates before ``on_train_epoch_end``: fit first, so validation scores a fitted model."""
        self._fit_collected()

    def on_train_epoch_end(self) -> None:
        """Fit when no validation ran this epoch."""
        self._fit_collected()

    def _fit_collected(self) -> None:
        """Fit the Gaussians on every collected training image, then free the features."""
        if self._features:
            levels = [torch.cat(maps) for maps in zip(*self._features, strict=True)]
            self.model.fit([level.to(self.device) for level in levels])
        self._features = []

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Score the batch (feeds anomalib's post-processor statistics)."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the training images, no sanity validation on an unfitted model."""
        return {"max_epochs": 1, "num_sanity_val_steps": 0, "gradient_clip_val": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: fitted on normal images only."""
        return LearningType.ONE_CLASS
