"""SimpleNet as an anomalib model (thin Lightning wrapper around :class:`SimpleNetModel`)."""

from __future__ import annotations

import logging
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
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_simplenet.components.distributed import log_global_mean
from anomalib_simplenet.components.pre_processing import as_size, imagenet_pre_processor
from anomalib_simplenet.reliability.guards import check_finite_terms
from anomalib_simplenet.reliability.size_checks import check_input_size

from ..plugin_module import PluginModuleMixin
from .feature_cache import TrainingFeatureCache
from .feature_noise import DEFAULT_RELATIVE_NOISE_STD
from .fit_caches import FitFeatureCaches
from .fit_start import fit_training_statistics
from .loss import TruncatedL1Loss
from .noise_scale import LearnsNothingCheck
from .torch_model import SimpleNetModel
from .training_step import discriminator_step

logger = logging.getLogger(__name__)
VAL_NOISE_SEED = 20230617  # any fixed value: val_loss must see the same noise every epoch


class SimpleNet(PluginModuleMixin, AnomalibModule):
    """SimpleNet (Liu et al., CVPR 2023): the official architecture and training, with the feature size and the noise
    σ derived from the backbone.

    The authors' setup (their MVTec AD run; ``configs/simplenet_official.yaml``)::

        from anomalib_simplenet.components.pre_processing import CenterCropPreProcessor

        model = SimpleNet(
            backbone="wide_resnet50_2.tv_in1k",  # torchvision's ImageNet weights; timm's plain name is racm_in1k
            layers=["layer2", "layer3"],  # 1536-d features and a 1024-wide discriminator follow from them
            noise_std=0.015,  # absolute σ, tuned for these features (other backbones: leave it None)
            image_size=288,
            pre_processor=CenterCropPreProcessor(image_size=288, resize_shorter_side=329),  # images and masks
        )
        datamodule = MVTecAD(..., train_batch_size=8, val_split_mode="from_test")
        Engine(max_epochs=160, check_val_every_n_epoch=4).fit(model, datamodule=datamodule)  # 40 × 4 epochs

    The official loop evaluates after every 4 discriminator epochs and keeps the meta-epoch with the best *test*
    AUROC; select on validation images instead (e.g. ``ModelCheckpoint(monitor="val_loss")``), and use no early
    stopping on a loss that has not moved (:class:`anomalib_simplenet.callbacks.EarlyStoppingOnceMoved`).

    Args:
        backbone: timm backbone name.
        layers: backbone layers to aggregate; default: the last stride-8 and stride-16 stages (``layer2, layer3``
            for ResNets, ``blocks.2, blocks.4`` for EfficientNet-Lite).
        pre_trained: ImageNet weights for the backbone (needs the hub or its cache).
        backbone_weights: local backbone state dict (``.pth``/``.pt``/``.safetensors``/``.bin``); overrides
            ``pre_trained``. For air-gapped machines.
        image_size: model input size; the default pre-processor resizes to it.
        patch_size: neighbourhood size of the local aggregation.
        pretrain_embed_dim: per-layer feature length; default ``min(1536, Σ layer channels)``.
        target_embed_dim: final feature length; default ``min(1536, Σ layer channels)`` (1536 for
            ``wide_resnet50_2``, 152 for ``efficientnet_lite0``).
        adapter_layers: number of feature-adapter layers.
        discriminator_layers: number of discriminator layers.
        discriminator_hidden: discriminator hidden width; default ``min(1024, D)`` (the official 1024 for
            ``wide_resnet50_2``'s 1536-long features, never wider than the features).
        noise_std: absolute σ of the Gaussian noise that makes synthetic anomalous features (the official code:
            0.015, tuned for ``wide_resnet50_2``); it wins over ``relative_noise_std``. Default ``None``: relative.
        relative_noise_std: σ as a fraction of the training features' scale (``sqrt(mean_c Var_c)``, measured
            on the training images at the start of fit, in the same pass that fills the feature cache, and
            saved in the checkpoint), so the default suits any backbone.
        margin: margin of the truncated L1 loss.
        adapter_lr: AdamW learning rate of the adapter.
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_weight_decay: Adam weight decay of the discriminator.
        anomaly_map_sigma: Gaussian smoothing σ (pixels) of the anomaly map.
        feature_cache: cache the frozen backbone's features of each training image after the first epoch and
            train adapter and discriminator from the cache (the noise is still drawn every step, so the loss
            curve is the same). ``"auto"``/``True``/``"memory"``: CPU memory; ``"disk"``: files in
            ``feature_cache_dir``; ``False``/``"off"``: recompute every step. It falls back to recomputing, with
            a log message, when training augmentations are on or the training set's features would exceed
            ``feature_cache_max_gb`` (``wide_resnet50_2`` at 288 px: 8 MB per image). Training batches served
            from the cache carry 3×1×1 stand-in images (their files are not read); ``False`` keeps real images
            for callbacks that look at them. While fitting, the
            validation images' features are cached the same way (a second cache of the same bound), and once all
            are cached, later validation batches carry stand-in images too (with their real masks).
        feature_cache_max_gb: bound of the cache in GiB.
        feature_cache_dir: folder for ``feature_cache="disk"`` (default: a temporary folder, removed after fit).
        feature_cache_dtype: precision the cached features are stored in: ``"float32"`` or ``"float16"`` (half
            the memory; rounding of relative size 2⁻¹¹, far below the training noise) or ``"bfloat16"``.
        channels_last: channels-last backbone weights (faster convolutions; same numbers).
        location_gaussian: add the distance to a per-location Gaussian (fitted on the training features at the
            start of fit, in the feature-scale pass) to the discriminator's score, each in units of its spread on
            normal features: the position the discriminator cannot see (``models/simplenet/location_gaussian.py``).
            A deviation from the official code, which scores with the discriminator alone (``False``,
            configs/simplenet_official.yaml): on validation images of magnetic_tile, toothbrush and mpdd_metal_plate
            (EfficientNet-Lite0, 256 px; Inception-v3 on toothbrush and mpdd_metal_plate) it raised the mean image
            and pixel AUROC (benchmarks/simplenet_sweep.py). ``None`` (default): on, with all channels for features
            of at most 256 (EfficientNet-Lite: 152–168); wider ones (Inception-v3: 1056, wide_resnet50_2: 1536),
            whose per-location ``D×D`` matrices would take gigabytes, keep Gaussians on a seeded random subset of
            152 channels, as Padim does; ``True``: all channels whatever the width.
        grid_alignment: place the anomaly map where the backbone's cells really look (their positions are
            measured once from the backbone, without data, and saved with the model); ``False`` reproduces the
            official SimpleNet maps exactly, which sit down-right of the defects by up to a defect's radius.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        image_size: int | tuple[int, int] = 288,
        patch_size: int = 3,
        pretrain_embed_dim: int | None = None,
        target_embed_dim: int | None = None,
        adapter_layers: int = 1,
        discriminator_layers: int = 2,
        discriminator_hidden: int | None = None,
        noise_std: float | None = None,
        relative_noise_std: float = DEFAULT_RELATIVE_NOISE_STD,
        margin: float = 0.5,
        adapter_lr: float = 1e-4,
        discriminator_lr: float = 2e-4,
        discriminator_weight_decay: float = 1e-5,
        anomaly_map_sigma: float = 4.0,
        feature_cache: bool | str = "auto",
        feature_cache_max_gb: float = 4.0,
        feature_cache_dir: str | None = None,
        feature_cache_dtype: str = "float32",
        channels_last: bool = True,
        location_gaussian: bool | None = None,
        grid_alignment: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        check_input_size(as_size(image_size), anomaly_map_sigma, "SimpleNet")
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(as_size(image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = SimpleNetModel(
            backbone=backbone,
            layers=None if layers is None else list(layers),
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            patch_size=patch_size,
            pretrain_embed_dim=pretrain_embed_dim,
            target_embed_dim=target_embed_dim,
            adapter_layers=adapter_layers,
            discriminator_layers=discriminator_layers,
            discriminator_hidden=discriminator_hidden,
            noise_std=noise_std,
            relative_noise_std=relative_noise_std,
            anomaly_map_sigma=anomaly_map_sigma,
            channels_last=channels_last,
            location_gaussian=location_gaussian,
            grid_alignment=grid_alignment,
        )
        self.feature_caches = FitFeatureCaches(
            self.model.extract_features, feature_cache, feature_cache_max_gb, feature_cache_dir, feature_cache_dtype
        )
        self.loss = TruncatedL1Loss(margin)
        # Two optimisers of different kinds (AdamW / Adam with L2), as the official code.
        self.automatic_optimization = False

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 288×288) and normalise with ImageNet statistics."""
        return imagenet_pre_processor(image_size or (288, 288))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW for the adapter, Adam with weight decay for the discriminator."""
        adapter_optimizer = torch.optim.AdamW(self.model.adapter.parameters(), lr=self.hparams.adapter_lr)
        discriminator_optimizer = torch.optim.Adam(
            self.model.discriminator.parameters(),
            lr=self.hparams.discriminator_lr,
            weight_decay=self.hparams.discriminator_weight_decay,
        )
        return [adapter_optimizer, discriminator_optimizer]

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step on normal images: adapted vs noised features through the discriminator."""
        del args, kwargs
        features = self.feature_caches.training(batch.image, batch.image_path)
        loss, normal_scores, noised_scores = discriminator_step(
            self.model, self.loss, features, self.optimizers(), self.manual_backward,
            lambda terms: check_finite_terms(terms, model=self),
        )
        margin, size = self.loss.margin, len(batch.image)
        # Fractions of locations already past the margin: the official code's p_true / p_fake.
        p_normal = (normal_scores >= margin).float().mean()
        p_noised = (noised_scores <= -margin).float().mean()
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=size)
        self.log("p_normal", p_normal, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("p_noised", p_noised, on_epoch=True, prog_bar=True, batch_size=size)
        return {"loss": loss.detach()}

    @property
    def training_features(self) -> TrainingFeatureCache:
        """The training feature cache (its counts of computed and served images are read by measurements)."""
        return self.feature_caches.training

    def needs_train_images(self, batch: Batch) -> bool:
        """False when every image of ``batch`` has its features in the training cache (its pre-processing is
        then skipped by the pre-processor)."""
        return self.feature_caches.needs_images(batch.image_path)

    def on_train_epoch_end(self) -> None:
        """Warn when the epoch's statistics show the signature of noise too small to learn from (validation,
        when due this epoch, has run before this hook)."""
        metrics = self.trainer.callback_metrics  # the epoch means of what training_step logged, and val_loss
        if "p_normal_epoch" not in metrics:
            return
        p_normal, p_noised = float(metrics["p_normal_epoch"]), float(metrics["p_noised_epoch"])
        train_loss = float(metrics["train_loss_epoch"])
        if self.current_epoch == 0:
            logger.info("First epoch: p_normal %.3f, p_noised %.3f, loss %.3f.", p_normal, p_noised, train_loss)
        validated = self._validations > self._validations_checked and "val_loss" in metrics
        self._validations_checked = self._validations
        val_loss = float(metrics["val_loss"]) if validated else None
        warning = self._learns_nothing.after_epoch(self.current_epoch, p_normal, p_noised, train_loss, val_loss)
        if warning:
            logger.warning(warning)

    def on_train_start(self) -> None:
        """Decide whether this fit trains from the feature cache (logs why not); measure the feature scale."""
        self._learns_nothing = LearnsNothingCheck(self.model.noise_generator, self.loss.margin)
        self._validations = self._validations_checked = 0
        self.feature_caches.start(self.trainer, self.pre_processor)
        fit_training_statistics(self.model, self.trainer, self.pre_processor, self.feature_caches.training, self.device)

    def on_train_epoch_start(self) -> None:
        """From the first epoch after the training features are cached (at the start of fit, or in the first
        epoch with an absolute ``noise_std``), the training loader stops reading the cached images' files."""
        self.feature_caches.skip_cached_images(self.trainer)

    def on_fit_end(self) -> None:
        """Free the feature caches: they only serve one fit."""
        self.feature_caches.stop()

    def teardown(self, stage: str) -> None:
        """Free the feature caches also when fitting stops with an error."""
        del stage
        self.feature_caches.stop()

    def on_validation_epoch_start(self) -> None:
        """Restart the validation noise, so ``val_loss`` of every epoch sees the same noise."""
        self._val_noise: torch.Generator | None = None
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self._validations += 1  # a fresh val_loss for the learns-nothing check

    def on_validation_epoch_end(self) -> None:
        """Once every validation image's features are cached, later validations of this fit skip decoding the
        images (their masks are still read)."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.feature_caches.skip_cached_validation_images(self.trainer)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict on validation images (the post-processor fits its threshold and normalisation on them).

        While fitting, also logs ``val_loss``: the training objective on the normal validation images, with
        noise from a generator reseeded every epoch, for ``EarlyStopping(monitor="val_loss")``.
        """
        del args, kwargs
        features = self.feature_caches.validation(batch.image, batch.image_path)
        if self._trainer is not None and self.trainer.validating and batch.gt_label is not None:
            self._log_val_loss(features[batch.gt_label == 0])
        return batch.update(**self.model.predict(features, batch.image.shape[-2:])._asdict())

    def _log_val_loss(self, features: torch.Tensor) -> None:
        """Truncated L1 loss on normal features ``(n, D, h, w)`` (eval mode: BatchNorm running statistics)."""
        loss = None
        if len(features) > 0:
            if getattr(self, "_val_noise", None) is None:
                self._val_noise = torch.Generator(device=features.device).manual_seed(VAL_NOISE_SEED)
            loss = self.loss(*self.model.discriminate(features, generator=self._val_noise))
        log_global_mean(self, "val_loss", loss, len(features), prog_bar=True)  # over all ranks' normal images

    @property
    def fixed_train_shards(self) -> bool:
        """Under DDP, keep each rank's training images for the whole fit, so its feature cache fills once."""
        return self.feature_caches.fixed_shards

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation steps: they would feed an untrained model into the post-processor."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS
