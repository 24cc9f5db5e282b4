"""SimpleNet's training-feature scale (for relative noise) and the check that the noise is learnable."""

from __future__ import annotations

from typing import Any

import torch

from anomalib_simplenet.components.distributed import gather_by_key
from anomalib_simplenet.reliability.rng_state import capture_rng_state, restore_rng_state

from .feature_cache import TrainingFeatureCache
from .feature_noise import AnomalyFeatureGenerator
from .feature_scale import FeatureMoments

# Without a feature cache the pass is extra work: a few hundred images pin the scale to within ~1 %.
UNCACHED_SCALE_IMAGES = 256


@torch.no_grad()
def measure_feature_scale(
    trainer: Any,
    pre_processor: Any,
    features: TrainingFeatureCache,
    device: torch.device,
    collect: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Scale of the training features and the number of images it was measured on.

    One pass over ``trainer``'s training batches through ``features`` (pre-processed as in training). With the
    feature cache active this pass *is* the cache's first pass (the first epoch then reads from the cache), so
    it costs nothing extra; without it, at most :data:`UNCACHED_SCALE_IMAGES` images are used. ``collect``, when
    given, receives the features ``(N, D, h, w)`` of all ranks' images, each image once (for fits that need them all).
    """
    transform = getattr(pre_processor, "transform", None)
    limit = None if features.active else UNCACHED_SCALE_IMAGES
    moments = FeatureMoments()
    # The pass draws a shuffle order: it must not shift the random stream training (or a resumed run) sees.
    rng_state = capture_rng_state()
    try:
        for batch in trainer.train_dataloader:
            images = batch.image.to(device)
            if transform is not None:
                images = transform(images)
            batch_features = features(images, batch.image_path)
            moments.update(batch_features, batch.image_path)
            if collect is not None:
                collect.append(batch_features.float())
            if limit is not None and moments.images >= limit:
                break
    finally:
        restore_rng_state(rng_state)
    if collect is not None and collect:
        # Under DDP a collective (every rank has batches): all ranks then fit the same thing.
        _, (everything,) = gather_by_key(moments.keys, torch.cat(collect))
        collect[:] = [everything.cpu()]
    # Under DDP every rank reaches this line: the totals are gathered over all ranks' images, each once.
    return moments.scale(), moments.images


def noise_warning(p_normal: float, p_noised: float, noise: AnomalyFeatureGenerator) -> str | None:
    """A warning when the first epoch's fractions past the margin say the discriminator learns nothing.

    Noise far below the feature scale is indistinguishable from the features: the discriminator then puts
    (almost) every location on the same side, so one fraction is stuck near 1 while the other stays low.
    """
    if not (p_noised > 0.95 and p_normal < 0.5) and not (p_normal > 0.95 and p_noised < 0.5):
        return None
    if noise.relative:
        setting = f"relative_noise_std={noise.relative_noise_std} × feature scale {float(noise.feature_scale):.4g}"
        hint = "raise relative_noise_std"
    else:
        setting = f"noise_std={noise.noise_std} (absolute)"
        hint = "raise noise_std, or leave it unset (None) for noise relative to the feature scale"
    return (
        f"SimpleNet is not separating normal from noised features after the first epoch (p_normal={p_normal:.2f}, "
        f"p_noised={p_noised:.2f}): the noise is probably too small for these features ({setting}); {hint}."
    )
