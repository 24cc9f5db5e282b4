"""SimpleNet's training-feature scale (for relative noise) and the check that the noise is learnable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from anomalib_simplenet.components.distributed import RowsByKey
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
    collect: RowsByKey | None = None,
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Scale of the training features and the number of images it was measured on.

    One pass over ``trainer``'s training batches through ``features`` (pre-processed as in training). With the
    feature cache active this pass *is* the cache's first pass (the first epoch then reads from the cache), so
    it costs nothing extra; without it, at most :data:`UNCACHED_SCALE_IMAGES` images are used. ``collect``, when
    given, receives each batch's features ``(n, D, h, w)`` (or the part ``keep`` returns of them) with their image
    keys (read back once per image, over all ranks, for fits that need them all).
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
                kept = batch_features if keep is None else keep(batch_features)
                collect.add(kept.float(), moments.keys[-len(batch_features) :])
            if limit is not None and moments.images >= limit:
                break
    finally:
        restore_rng_state(rng_state)
    # Under DDP every rank reaches this line: the totals are gathered over all ranks' images, each once.
    return moments.scale(), moments.images


# A head that cannot tell noised from normal features scores both alike; for any score s in [-m, m] the truncated
# L1 loss is then (m - s) + (m + s) = 2m, where it settles. An untrained head starts above it (scores on the
# wrong side), a learning one goes below it: only a loss that stays within CEILING_TOLERANCE × 2m of 2m for two
# epochs (or validations) in a row is "flat at the ceiling". One epoch is not enough: on a few dozen images the
# first epochs of a healthy run pass through 1.0 on their way down.
CEILING_TOLERANCE = 0.01
# "Far from 1": fewer than half the locations past the margin.
LOW_FRACTION = 0.5


class LearnsNothingCheck:
    """Watches SimpleNet's epoch statistics and returns, once per fit, a warning naming the noise setting when
    they say that the discriminator learns nothing (noise far below the feature scale is indistinguishable
    from the features). Signatures, each enough on its own:

    * after the first epoch, one fraction past the margin near 1 and the other low (one side for everything);
    * the training loss flat at its ceiling ``2 · margin`` for two epochs with both fractions far from 1;
    * the validation loss (fixed noise, normal validation images) flat at ``2 · margin`` for two validations.
    """

    def __init__(self, noise: AnomalyFeatureGenerator, margin: float) -> None:
        self.noise = noise
        self.ceiling = 2 * margin
        self.previous_train_at_ceiling = False
        self.previous_val_at_ceiling = False
        self.warned = False

    def _at_ceiling(self, loss: float) -> bool:
        return abs(loss - self.ceiling) <= CEILING_TOLERANCE * self.ceiling

    def after_epoch(
        self, epoch: int, p_normal: float, p_noised: float, train_loss: float, val_loss: float | None = None
    ) -> str | None:
        """Epoch means of the fractions and the training loss, and ``val_loss`` when a validation just ran."""
        evidence = []
        one_sided = (p_noised > 0.95 and p_normal < LOW_FRACTION) or (p_normal > 0.95 and p_noised < LOW_FRACTION)
        if epoch == 0 and one_sided:
            evidence.append(f"after the first epoch p_normal={p_normal:.2f}, p_noised={p_noised:.2f}")
        train_flat = self._at_ceiling(train_loss) and max(p_normal, p_noised) < LOW_FRACTION
        if train_flat and self.previous_train_at_ceiling:
            evidence.append(f"training loss {train_loss:.3f} with p_normal={p_normal:.2f}, p_noised={p_noised:.2f}")
        self.previous_train_at_ceiling = train_flat
        if val_loss is not None:
            if self._at_ceiling(val_loss) and self.previous_val_at_ceiling:
                evidence.append(f"validation loss {val_loss:.3f}")
            self.previous_val_at_ceiling = self._at_ceiling(val_loss)
        if not evidence or self.warned:
            return None
        self.warned = True
        return self.message(evidence)

    def message(self, evidence: list[str]) -> str:
        """The warning for ``evidence``, with the noise setting to change."""
        noise = self.noise
        if noise.relative:
            setting = f"relative_noise_std={noise.relative_noise_std} × feature scale {float(noise.feature_scale):.4g}"
            hint = "raise relative_noise_std"
        else:
            setting = f"noise_std={noise.noise_std} (absolute)"
            hint = "raise noise_std, or leave it unset (None) for noise relative to the feature scale"
        return (
            f"SimpleNet is not separating normal from noised features ({'; '.join(evidence)}; a loss flat at "
            f"{self.ceiling:g} = 2 × margin means both are scored alike): the noise is probably too small for "
            f"these features ({setting}); {hint}."
        )
