"""What SimpleNet measures on its training features before the first epoch: their scale and the location Gaussian."""

from __future__ import annotations

import logging
from typing import Any

import torch

from anomalib_simplenet.components.distributed import RowsByKey

from .feature_cache import TrainingFeatureCache
from .noise_scale import measure_feature_scale
from .torch_model import SimpleNetModel

logger = logging.getLogger(__name__)
GAUSSIAN_FIT_BATCH = 32  # images per step of the streamed location-Gaussian fit


def fit_training_statistics(
    model: SimpleNetModel,
    trainer: Any,
    pre_processor: Any,
    features: TrainingFeatureCache,
    device: torch.device,
) -> None:
    """Set the relative noise's feature scale and fit the per-location Gaussian, in one pass over the training set.

    Neither needs a pass when the noise is absolute and the Gaussian is off. With the feature cache active the
    pass is the cache's first pass (see :func:`.noise_scale.measure_feature_scale`).
    """
    gaussian = model.location_gaussian
    noise = model.noise_generator
    collected = RowsByKey() if gaussian is not None else None
    if not noise.relative and gaussian is None:
        return
    # Only the channels the Gaussians model are kept (152 of Inception-v3's 1056: 0.4 instead of 3 GB on 762 images).
    keep = gaussian.kept_channels if gaussian is not None else None
    scale, images = measure_feature_scale(trainer, pre_processor, features, device, collected, keep)
    if collected is not None:
        # In key order over all ranks (a collective under DDP, where every rank has batches): all fit the same.
        count, batches = collected.batches(GAUSSIAN_FIT_BATCH)
        gaussian.fit(batches, count)
        logger.info("Per-location Gaussian fitted on %d training images.", images)
    if noise.relative:
        noise.set_feature_scale(scale)
        logger.info(
            "Feature scale %.4g (%d training images): noise σ = %g × %.4g = %.4g.",
            float(scale), images, noise.relative_noise_std, float(scale), float(noise.sigma()),
        )
