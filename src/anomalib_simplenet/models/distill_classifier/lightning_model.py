"""DistillClassifier as an anomalib model (thin Lightning wrapper around :class:`DistillClassifierModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_simplenet.components.distributed import average_gradients, gather_by_key, log_global_mean
from anomalib_simplenet.components.guards import check_finite_terms
from anomalib_simplenet.components.pre_processing import as_size, imagenet_pre_processor
from anomalib_simplenet.components.size_checks import check_input_size

from ..plugin_module import PluginModuleMixin
from .arguments import check_arguments, default_weight
from .fitting import collect_features, holdout_mask
from .loss import FeatureDistillationLoss, SoftLabelDistillationLoss
from .networks import STAGES, stage_grid
from .post_processing import PercentileThresholdPostProcessor
from .tasks import (
    apply_transforms,
    category_labels,
    fixed_transform_labels,
    random_transform_labels,
)
from .teacher import TEACHER_BACKBONE, Teacher, resolve_teacher_layers
from .torch_model import DistillClassifierModel

_TEACHER_STATE_KEY = "distill_classifier_teacher_trainable"


class DistillClassifier(PluginModuleMixin, AnomalibModule):
    """Small ResNet-18 student trained on normal images; Mahalanobis scoring of its features.

    **Training.** ``mode="scratch"``: the randomly initialised student learns a classification task.
    With several categories in the training data (``categories``, or a datamodule with a ``categories``
    attribute such as :class:`~anomalib_simplenet.data.multi_category.MultiCategoryMVTec`) the classes are
    the categories.
    With one category there is nothing to classify, so the task is self-supervised: predict which of
    ``num_transforms`` geometric transforms (rotation by 0/90/180/270°, with or without a flip) was applied
    (Golan & El-Yaniv, NeurIPS 2018) — it needs no labels and forces the features to encode the
    orientation and structure of normal images. ``mode="distill"``: a frozen teacher (any timm
    ``teacher_backbone``, ResNet-18 by default; ImageNet weights or ``teacher_weights``) is matched at conv2_x
    and conv3_x with STPM's loss — by default its deepest stages at stride 4 and 8 (ResNet-18: ``layer1``/
    ``layer2``, the student's own shapes; EfficientNet-Lite: ``blocks.1``/``blocks.2``), with training-only 1×1
    projections of the student's maps where the teacher's channels differ — plus, when there is a category task,
    soft-label distillation of the head from a linear probe on the teacher's pooled features. On a single
    category that soft-label term is off by default (``soft_label_weight=None`` → 0): the transform labels
    would have to be learned by the probe on top of the frozen teacher — with a random teacher its soft labels
    carry no knowledge — so distillation of a single category is pure feature matching. The teacher, its
    projections and its head exist only during ``fit`` and are not part of ``self.model``: state dicts,
    inference and exports contain the student alone (a checkpoint keeps the projections' and head's tensors in a
    side entry, only for resuming ``fit``).

    **Scoring.** After each training epoch — before its validation, so that the post-processor's threshold and
    normalisation see the current student, and before checkpoints are saved — Gaussians are fitted with
    Ledoit–Wolf shrinkage on the normal training images (student in eval mode), per category: image score =
    Mahalanobis distance of the pooled conv3_x embedding; anomaly map = per-location Mahalanobis distances of
    the ``map_layers`` maps, each divided by ``sqrt(channels)``, averaged on the conv2_x grid, upsampled and
    smoothed. The default uses both stages: conv2_x localises at stride 4, conv3_x adds context at stride 8, and
    two separate Gaussians (64-d and 128-d) need ~4.5× less memory and fewer images than one on concatenated
    192-d features. With several categories an image is scored against the nearest category's Gaussian (no
    category label is needed at inference, so exported models work unchanged). The pooled embedding barely
    moves for small local defects; ``image_score="map_max"`` scores images by the anomaly map's maximum instead.

    **Thresholds.** A seeded ``holdout_fraction`` of the normal training images per category is kept out of the
    Gaussian fit (the student still trains on them, so the threshold is slightly optimistic); the
    ``threshold_percentile``-th percentile of their image scores is :attr:`percentile_threshold` (raw score
    units). It needs no anomalous images and targets a false-alarm rate of about
    ``1 − threshold_percentile/100`` on normal images; use it when the validation set has no (or unrepresentative)
    defects, or when the false-alarm rate is what matters. anomalib's default (``threshold_mode="f1_adaptive"``)
    picks the threshold maximising F1 on the validation set, which needs labelled anomalies there.
    ``threshold_mode="percentile"`` makes the post-processor use the percentile threshold for image labels (also
    in exported models). The percentile is interpolated between the held-out scores: with ``n`` held-out images,
    percentiles above ``100·(1 − 1/n)`` are about the maximum.

    **Early stopping.** ``val_loss`` is the training objective on the *normal* validation images (a
    validation split disjoint from test), logged during ``fit``; monitor it with
    ``EarlyStopping(monitor="val_loss")``. The validation set must contain normal images.

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
            measured from the student, without data, each time the Gaussians are fitted, and saved with the
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
        self.feature_loss = FeatureDistillationLoss()
        self.soft_label_loss = SoftLabelDistillationLoss(temperature)
        # Provisional until ``setup`` knows the data's categories (only then is "all weights 0" an error).
        self.loss_weights = self._resolve_loss_weights(multi_category=len(categories) > 1, strict=False)
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
        categories = self._resolve_categories()
        multi = len(categories) > 1
        num_classes = len(categories) if multi else self.hparams.num_transforms
        self.model.set_categories(categories, num_classes)
        # Saved with the checkpoint, so load_from_checkpoint rebuilds the same head and Gaussians.
        self.hparams["categories"] = list(categories)
        self.loss_weights = self._resolve_loss_weights(multi)
        # A head outside the objective gets no gradient, which DDP reports as unused parameters.
        self.model.student.fc.requires_grad_(self._uses_head)
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

    def _resolve_categories(self) -> list[str]:
        if self.hparams.categories:
            return [str(c) for c in self.hparams.categories]
        datamodule = getattr(self._trainer, "datamodule", None)  # no trainer (e.g. a manual setup): no datamodule
        categories = getattr(datamodule, "categories", None)
        if categories:
            return [str(c) for c in categories]
        category = getattr(datamodule, "category", None)
        return [str(category) if category else "default"]

    def _resolve_loss_weights(self, multi_category: bool, strict: bool = True) -> dict[str, float]:
        hparams = self.hparams
        distill = hparams.mode == "distill"
        weights = {
            "feature": float(hparams.feature_weight) if distill else 0.0,
            "classification": default_weight(hparams.classification_weight, 0.0 if distill else 1.0),
            "soft_label": default_weight(hparams.soft_label_weight, 1.0 if distill and multi_category else 0.0),
        }
        if strict and not any(weights.values()):
            msg = f"all loss weights are 0 in mode {hparams.mode!r}: {weights}; nothing would be trained"
            raise ValueError(msg)
        return weights

    # -------------------------------------------------------------------------------------- objective
    @property
    def _uses_head(self) -> bool:
        return self.loss_weights["classification"] > 0 or self.loss_weights["soft_label"] > 0

    def _task(
        self,
        images: torch.Tensor,
        paths: Sequence[str],
        train: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images as the student sees them and their task labels (``None`` when the head is not trained)."""
        if not self._uses_head:
            return images, None
        if len(self.model.categories) > 1:
            return images, category_labels(paths, self.model.categories, images.device)
        draw = random_transform_labels if train else fixed_transform_labels
        labels = draw(len(images), self.hparams.num_transforms, images.device)
        return apply_transforms(images, labels), labels

    def objective(self, images: torch.Tensor, paths: Sequence[str], train: bool = True) -> dict[str, torch.Tensor]:
        """Loss terms for pre-processed normal images ``(N, 3, H, W)``.

        Returns:
            ``loss`` (the weighted student objective), its non-zero-weight terms by name, and
            ``teacher_head`` (cross-entropy of the teacher's probe, optimised alongside) when present.
        """
        images, labels = self._task(images, paths, train)
        output = self.model.student(images)
        weights = self.loss_weights
        terms: dict[str, torch.Tensor] = {}
        if weights["classification"] > 0:
            terms["classification"] = F.cross_entropy(output.logits, labels)
        extra: dict[str, torch.Tensor] = {}
        if self.teacher is not None:
            teacher_maps, teacher_logits = self.teacher.to(images.device)(images)
            if weights["feature"] > 0:
                student_maps = [output.features.conv2_x, output.features.conv3_x]
                terms["feature"] = self.feature_loss(*self.teacher.align(teacher_maps, student_maps))
            if teacher_logits is not None:
                terms["soft_label"] = self.soft_label_loss(teacher_logits, output.logits)
                extra["teacher_head"] = F.cross_entropy(teacher_logits, labels)
        loss = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return {"loss": loss, **terms, **extra}

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

        Under DDP each rank embeds its shard and the features of all ranks are gathered (duplicates dropped),
        so every rank fits the same Gaussians and threshold as one process on the whole training set.
        """
        loader = self.trainer.train_dataloader
        if loader is None:
            msg = "fit_gaussians needs the trainer's training dataloader (call it during fit)"
            raise RuntimeError(msg)
        pre_process = self.pre_processor
        if isinstance(pre_process, PreProcessor):
            pre_process = pre_process.transform
        features, paths = collect_features(self.model.student, loader, pre_process, self.device)
        # Under DDP: every rank's images, once each (the sampler pads shards with repeats), in path order.
        paths, gathered = gather_by_key(paths, *features)
        features = type(features)(*gathered)
        categories = self.model.categories
        if len(categories) > 1:
            category_index = category_labels(paths, categories)
        else:
            category_index = torch.zeros(len(paths), dtype=torch.long)
        fit_mask = holdout_mask(paths, category_index, self.hparams.holdout_fraction)
        self.model.fit(features, category_index, fit_mask, self.hparams.threshold_percentile)
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
