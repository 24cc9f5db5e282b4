"""UNetAE as an anomalib model (thin Lightning wrapper around :class:`UNetAEModel`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
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

from anomalib_simplenet.components.distributed import all_reduce_sum, batch_keys, gather_by_key
from anomalib_simplenet.components.pre_processing import as_size, resize_pre_processor
from anomalib_simplenet.reliability.guards import check_finite_terms
from anomalib_simplenet.reliability.size_checks import check_input_size

from ..plugin_module import PluginModuleMixin
from .anomaly_map import image_score
from .loss import ReconstructionLoss
from .torch_model import UNetAEModel

logger = logging.getLogger(__name__)


class UNetAE(PluginModuleMixin, AnomalibModule):
    """U-Net-shaped auto-encoder trained from scratch on normal images; anomalies are badly reconstructed pixels.

    Args:
        image_size: model input size; the default pre-processor only resizes to it (pixels stay in ``[0, 1]``,
            which the sigmoid output and the SSIM constants assume; ImageNet statistics mean nothing here).
        depth: number of ×2 downsamplings.
        base_channels: channels of the full-resolution level (doubling per level, at most ×8).
        latent_dim: bottleneck channels = image-embedding length.
        skip_levels: number of deepest encoder levels with a skip connection (``depth`` = full U-Net, which
            copies defects through; 0 = plain auto-encoder).
        skip_dropout: channel dropout on skipped features during training.
        mask_ratio: fraction of ``mask_patch_size`` squares hidden in training inputs (the loss sees clean images).
        mask_patch_size: side (pixels) of the hidden squares.
        l2_weight, ssim_weight: loss weights of the MSE and of ``1 − SSIM``.
        map_l2_weight, map_ssim_weight: anomaly-map weights of the per-pixel RMS error and ``(1 − SSIM) / 2``.
        anomaly_map_sigma: Gaussian smoothing σ (pixels) of the anomaly map.
        score_mode: image score from the map, ``"max"`` or ``"topk_mean"``.
        top_k: pixels averaged by ``"topk_mean"``.
        use_embedding_score: add the standardised Mahalanobis distance of the image embedding (Gaussian fitted on
            the normal training images before each validation) to the standardised map score.
        embedding_weight: weight of that distance.
        learning_rate, weight_decay: Adam settings.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).

    Defaults, measured on magnetic_tile (96 px, 120 train images, 8 epochs): one skip level passes defects
    through far less than a full U-Net (mean map inside / outside defect masks 1.37 vs 1.00) and beats the plain
    auto-encoder (1.24); training-time masking and skip dropout did not help within that budget, so both are off.
    ``base_channels=16`` keeps CPU training practical (1.2 M weights); the bottleneck, not the width, limits
    what can be copied.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 256,
        depth: int = 4,
        base_channels: int = 16,
        latent_dim: int = 128,
        skip_levels: int = 1,
        skip_dropout: float = 0.0,
        mask_ratio: float = 0.0,
        mask_patch_size: int = 8,
        l2_weight: float = 1.0,
        ssim_weight: float = 1.0,
        map_l2_weight: float = 0.5,
        map_ssim_weight: float = 0.5,
        anomaly_map_sigma: float = 4.0,
        score_mode: str = "max",
        top_k: int = 100,
        use_embedding_score: bool = False,
        embedding_weight: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(as_size(image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = UNetAEModel(
            in_channels=3,  # anomalib hands every image over as RGB (grayscale is replicated)
            depth=depth,
            base_channels=base_channels,
            latent_dim=latent_dim,
            skip_levels=skip_levels,
            skip_dropout=skip_dropout,
            mask_ratio=mask_ratio,
            mask_patch_size=mask_patch_size,
            map_l2_weight=map_l2_weight,
            map_ssim_weight=map_ssim_weight,
            anomaly_map_sigma=anomaly_map_sigma,
            score_mode=score_mode,
            top_k=top_k,
            use_embedding_score=use_embedding_score,
            embedding_weight=embedding_weight,
        )
        height, width = as_size(image_size)
        bottleneck = (-(-height // 2**depth), -(-width // 2**depth))
        check_input_size((height, width), anomaly_map_sigma, "UNetAE", bottleneck, f"bottleneck (depth={depth})")
        self.loss = ReconstructionLoss(self.model.anomaly_map_generator.ssim, l2_weight, ssim_weight)
        self._trained_since_fit = False
        self._val_loss_sums = torch.zeros(4)  # normal-image loss sum, normal count, all-image loss sum, all count

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 256×256); no normalisation (see ``image_size``)."""
        return resize_pre_processor(image_size or (256, 256))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on all weights."""
        return torch.optim.Adam(
            self.model.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay,
        )

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct (masked) normal images; L2 + SSIM loss against the clean images."""
        del args, kwargs
        reconstruction = self.model(batch.image)
        l2, ssim = (term.mean() for term in self.loss.terms(reconstruction, batch.image))
        check_finite_terms({"l2": l2, "ssim": ssim}, model=self)
        loss = self.loss.l2_weight * l2 + self.loss.ssim_weight * ssim
        self._trained_since_fit = True
        size = len(batch.image)
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train_l2", l2.detach(), on_step=False, on_epoch=True, batch_size=size)
        self.log("train_ssim_loss", ssim.detach(), on_step=False, on_epoch=True, batch_size=size)
        return {"loss": loss}

    def on_validation_start(self) -> None:
        """Refit the embedding Gaussian on the training images if the weights changed since the last fit.

        Done here, before any validation batch, so that the post-processor's threshold and normalisation are
        computed from scores of the fitted model (as anomalib's Padim fits before validation).
        """
        if self.model.use_embedding_score and (self._trained_since_fit or not self.model.mahalanobis.fitted):
            self.fit_embedding_distribution()

    def on_train_end(self) -> None:
        """Refit after the last training step when no validation followed it (e.g. ``limit_val_batches=0``)."""
        if self.model.use_embedding_score and self._trained_since_fit:
            self.fit_embedding_distribution()

    def _training_batches(self) -> Iterable[Batch] | None:
        """The training dataloader: the fit loop's, else the datamodule's (standalone ``validate``)."""
        loader = self.trainer.train_dataloader
        datamodule = getattr(self.trainer, "datamodule", None)
        if loader is None and datamodule is not None:
            try:
                loader = datamodule.train_dataloader()
            except (AttributeError, RuntimeError, NotImplementedError):
                loader = None
        return loader

    @torch.no_grad()
    def fit_embedding_distribution(self, batches: Iterable[Batch] | None = None) -> None:
        """Fit the Mahalanobis Gaussian and score statistics on normal training images (eval mode, no masking).

        Args:
            batches: batches of normal images (raw, the pre-processor's transform is applied here);
                defaults to the trainer's training dataloader.
        """
        batches = batches if batches is not None else self._training_batches()
        if batches is None:
            logger.warning("UNetAE: no training data to fit the embedding Gaussian; image scores use it unfitted.")
            return
        transform = getattr(self.pre_processor, "transform", None)
        was_training = self.model.training
        self.model.eval()
        embeddings, map_scores, keys = [], [], []
        for batch in batches:
            images = batch.image.to(self.device)
            images = transform(images) if transform is not None else images
            reconstruction, embedding = self.model.reconstruct_and_embed(images)
            anomaly_map = self.model.anomaly_map_generator(images, reconstruction)
            embeddings.append(embedding)
            map_scores.append(image_score(anomaly_map, self.model.score_mode, self.model.top_k))
            keys += batch_keys(batch.image_path, len(images), len(keys))
        # Under DDP: every rank's images, once each (the sampler pads shards with repeats), in path order.
        _, (embeddings, map_scores) = gather_by_key(keys, torch.cat(embeddings), torch.cat(map_scores))
        self.model.fit_embedding_distribution(embeddings, map_scores)
        self.model.train(was_training)
        self._trained_since_fit = False

    def on_validation_epoch_start(self) -> None:
        """Reset the running validation-loss sums."""
        self._val_loss_sums = torch.zeros(4)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict on validation images (for the post-processor) and accumulate the loss of the normal ones."""
        del args, kwargs
        reconstruction, embedding = self.model.reconstruct_and_embed(batch.image)
        per_image = self.loss.per_image(reconstruction, batch.image)
        normal = batch.gt_label == 0 if batch.gt_label is not None else torch.ones_like(per_image, dtype=torch.bool)
        sums = [per_image[normal].sum().item(), normal.sum().item(), per_image.sum().item(), len(per_image)]
        self._val_loss_sums += torch.tensor(sums)
        return batch.update(**self.model.score(batch.image, reconstruction, embedding)._asdict())

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss``: the mean reconstruction loss of the normal validation images (for EarlyStopping).

        Validation images are a split disjoint from the test set. Only when the split holds no normal image at
        all does the loss fall back to all validation images (with a warning), so that the monitor always exists.
        """
        (sums,) = all_reduce_sum(self._val_loss_sums.to(self.device))  # evaluation shards are disjoint
        normal_sum, normal_count, all_sum, all_count = sums.tolist()
        if normal_count == 0 and all_count == 0:
            return
        if normal_count == 0:
            logger.warning("UNetAE: no normal validation image; val_loss uses all validation images.")
        val_loss = normal_sum / normal_count if normal_count else all_sum / all_count
        self.log("val_loss", val_loss, prog_bar=True)

    def export_fitted(self) -> bool:
        """The embedding-score Gaussian is fitted (when the image score uses it)."""
        return not self.model.use_embedding_score or bool(self.model.mahalanobis.fitted)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation steps: they would feed an untrained model into the post-processor."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS
