"""A per-location Gaussian next to SimpleNet's discriminator: where a feature sits, which the discriminator cannot see.

The discriminator scores one location at a time, wherever it is in the image; on aligned parts much of the signal is
*where* a feature occurs (Padim's model: one Gaussian per feature-map location). The ensemble adds the Mahalanobis
distance of each location's feature to that location's Gaussian, fitted on the frozen training features once at the
start of fit (no training), to the discriminator's score. Each term is first divided into units of its own spread on
normal training features (``(score - mean) / std``; the distance's on images its Gaussians did not see), so neither
dominates by its scale. Both are inference-time buffers: the model exports as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .location_moments import LocationMoments

TRACK_MOMENTUM = 0.1  # running statistics of the discriminator's normal scores: BatchNorm's default


class LocationGaussianEnsemble(nn.Module):
    """Discriminator score plus per-location Gaussian distance, both standardised on normal training features.

    Args:
        dim: feature length ``D``.

    Buffers (saved in checkpoints, exported): ``mean`` ``(G, D)`` and ``whitening`` ``(G, D, D)`` (the Cholesky factor
    ``L`` of each precision ``P = L·Lᵀ``: its values span the square root of the precision's range, so an FP16 export
    stores them in f16) of the ``G = h·w`` Gaussians (sized when fitted or loaded), the distance's ``gaussian_stats`` (mean, std) and the discriminator
    score's running mean and variance, kept by a one-channel BatchNorm (``score_norm``) that only tracks: it behaves
    as the discriminator's own BatchNorm layers do (momentum, per-process statistics under DDP, frozen with them).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(0, dim))
        self.register_buffer("whitening", torch.zeros(0, dim, dim))
        self.register_buffer("gaussian_stats", torch.tensor([0.0, 1.0]))
        self.score_norm = nn.BatchNorm2d(1, affine=False, momentum=TRACK_MOMENTUM)

    @property
    def fitted(self) -> bool:
        """True once the Gaussians are fitted (or loaded)."""
        return self.mean.shape[0] > 0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the grid size ``G`` of a saved ensemble before loading it (the buffers start empty)."""
        for name in ("mean", "whitening"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor], count: int | None = None) -> LocationGaussianEnsemble:
        """Fit the Gaussians on normal feature maps ``(n, D, h, w)``, streamed batch by batch.

        Args:
            batches: the training images' feature maps, in a fixed order (its first half is the held-out split's).
            count: number of images in ``batches``; ``None``: ``batches`` is read into a list first to count them.

        The distance's spread is measured on training images the Gaussians did not see (fitted on the first
        ``count // 2``, measured on the rest): in-sample distances are much smaller than those of new normal images
        when there are few images per location, and the Gaussian term would then outweigh the discriminator. The
        Gaussians kept are then fitted on all images. Only running sums (:class:`.location_moments.LocationMoments`)
        and the held-out distances are kept, not the features.
        """
        if count is None:
            batches = list(batches)
            count = sum(len(batch) for batch in batches)
        if count < 4:
            msg = f"location Gaussian needs at least 4 training images (2 per half), got {count}"
            raise ValueError(msg)
        half, seen = count // 2, 0
        moments = LocationMoments(self.dim)
        distances: list[torch.Tensor] = []
        for batch in batches:
            if batch.dim() == 4 and batch.shape[1] != self.dim:
                msg = f"location Gaussian: features have {batch.shape[1]} channels, the model was built for {self.dim}"
                raise ValueError(msg)
            batch = batch.detach().float().cpu()
            for part in (batch[: max(0, half - seen)], batch[max(0, half - seen) :]):
                if len(part) == 0:
                    continue
                if seen >= half:  # held out from the half fit: its distances measure the spread
                    distances += [self.distance(rows.to(self.mean.device)) for rows in part.split(32)]
                moments.update(part)
                seen += len(part)
                if seen == half:
                    self._set_gaussians(moments)
        if seen != count:
            msg = f"location Gaussian: told {count} training images, got {seen}"
            raise ValueError(msg)
        distances_all = torch.cat(distances)
        self.gaussian_stats.copy_(torch.stack([distances_all.mean(), distances_all.std().clamp_min(1e-6)]))
        self._set_gaussians(moments)
        return self

    def _set_gaussians(self, moments: LocationMoments) -> None:
        """Take the Gaussians of ``moments``, written into the buffers when their size already fits."""
        locations, device = moments.shift.shape[0], self.mean.device
        if tuple(self.whitening.shape) == (locations, self.dim, self.dim) and device.type == "cpu":
            moments.gaussians(out=(self.mean, self.whitening))
            return
        self.mean, self.whitening = (buffer.to(device) for buffer in moments.gaussians())

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances ``(N, 1, h, w)`` of features ``(N, D, h, w)`` to their locations' Gaussians."""
        if not self.fitted:
            msg = "location Gaussian is not fitted: fit SimpleNet (it fits it at the start of fit) or call fit()"
            raise RuntimeError(msg)
        count, dim, height, width = features.shape
        if height * width != self.mean.shape[0]:
            msg = (f"location Gaussian was fitted on a {self.mean.shape[0]}-location grid, got {height}×{width}: "
                   "use the input size it was trained with")
            raise ValueError(msg)
        delta = (features.flatten(2).transpose(1, 2) - self.mean).transpose(0, 1)  # (G, N, D)
        squared = torch.matmul(delta, self.whitening).square().sum(dim=-1)  # (G, N): δᵀ·L·Lᵀ·δ
        return squared.clamp_min(0).sqrt().transpose(0, 1).reshape(count, 1, height, width)

    @torch.no_grad()
    def track(self, normal_scores: torch.Tensor) -> None:
        """Update the running mean and variance of the discriminator's anomaly scores ``(N, 1, h, w)`` on normal
        training features (in training mode only, as BatchNorm)."""
        if self.training:
            self.score_norm(normal_scores)

    def standardised_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Discriminator scores ``(N, 1, h, w)`` in units of their running spread on normal training features."""
        norm = self.score_norm
        return (scores - norm.running_mean) / (norm.running_var + norm.eps).sqrt()

    def forward(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Combined anomaly scores ``(N, 1, h, w)`` from features ``(N, D, h, w)`` and discriminator scores."""
        gaussian = (self.distance(features) - self.gaussian_stats[0]) / self.gaussian_stats[1]
        return gaussian + self.standardised_scores(scores)
