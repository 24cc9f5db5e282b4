"""A per-location Gaussian next to SimpleNet's discriminator: where a feature sits, which the discriminator cannot see.

The discriminator scores one location at a time, wherever it is in the image; on aligned parts much of the signal is
*where* a feature occurs (Padim's model: one Gaussian per feature-map location). The ensemble adds the Mahalanobis
distance of each location's feature to that location's Gaussian, fitted on the frozen training features once at the
start of fit (no training), to the discriminator's score. The covariance is Padim's ridge by default (see
:mod:`anomalib_simplenet.components.mahalanobis`): with a few dozen images per location Ledoit–Wolf shrinks away the
low-variance directions that separate defects from normal features. Each term is first divided into units of its own
spread on normal training features (``(score - mean) / std``; the distance's as if on images its Gaussians did not
see: each training image's leave-one-out distance), so neither dominates by its scale. Both are inference-time
buffers: the model exports as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from anomalib_simplenet.components.mahalanobis import check_estimator

from .location_moments import LocationMoments

logger = logging.getLogger(__name__)
TRACK_MOMENTUM = 0.1  # running statistics of the discriminator's normal scores: BatchNorm's default


class LocationGaussianEnsemble(nn.Module):
    """Discriminator score plus per-location Gaussian distance, both standardised on normal training features.

    Args:
        dim: feature length ``D``.
        estimator: the Gaussians' covariance estimator, ``"ridge"`` or ``"ledoit_wolf"``.
        channels: fit the Gaussians on a seeded random subset of this many of the ``D`` channels (Padim's way of
            keeping per-location matrices small for wide features); ``None`` or ``≥ D``: all channels.
        seed: seed of the channel subset.

    Buffers (saved in checkpoints, exported): ``channels`` (the subset, when there is one), ``mean`` ``(G, C)`` and
    ``whitening`` ``(G, C, C)`` (``C`` the channels kept; the Cholesky factor ``L`` of each precision ``P = L·Lᵀ``:
    its values span the square root of the precision's range, so an FP16 export stores them in f16) of the
    ``G = h·w`` Gaussians (sized when fitted or loaded), the distance's ``gaussian_stats`` (mean, std) and the
    discriminator score's running mean and variance, kept by a one-channel BatchNorm (``score_norm``) that only tracks: it behaves
    as the discriminator's own BatchNorm layers do (momentum, per-process statistics under DDP, frozen with them).
    """

    def __init__(self, dim: int, estimator: str = "ridge", channels: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.estimator = check_estimator(estimator)
        self.register_buffer("channels", None)  # all channels; else the subset's indices
        if channels is not None and channels < dim:
            if channels < 1:
                msg = f"location Gaussian: channels must be ≥ 1, got {channels}"
                raise ValueError(msg)
            order = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
            self.channels = order[:channels].sort().values
        self.gaussian_dim = dim if self.channels is None else len(self.channels)
        self.register_buffer("mean", torch.zeros(0, self.gaussian_dim))
        self.register_buffer("whitening", torch.zeros(0, self.gaussian_dim, self.gaussian_dim))
        self.register_buffer("gaussian_stats", torch.tensor([0.0, 1.0]))
        self.score_norm = nn.BatchNorm2d(1, affine=False, momentum=TRACK_MOMENTUM)

    @property
    def fitted(self) -> bool:
        """True once the Gaussians are fitted (or loaded)."""
        return self.mean.shape[0] > 0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the grid size ``G`` of a saved ensemble before loading it (the buffers start empty); for a
        checkpoint without the Gaussians, log how to load it (torch then names the missing keys)."""
        for name in ("mean", "whitening"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        if prefix + "mean" not in state_dict:
            logger.warning(
                "The checkpoint has no location Gaussians (%smean): it was saved by a SimpleNet scoring with its "
                "discriminator alone (or before features of its width got Gaussians by default); build the model "
                "with location_gaussian=False to load it.", prefix,
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor], count: int | None = None) -> LocationGaussianEnsemble:
        """Fit the Gaussians on normal feature maps ``(n, D, h, w)``, streamed batch by batch in two passes.

        Args:
            batches: the training images' feature maps, all channels or only :meth:`kept_channels`; a one-shot
                iterator is read into a list first.
            count: number of images in ``batches``, checked when given.

        The first pass keeps only running sums (:class:`.location_moments.LocationMoments`), not the features. The
        second measures the distance's spread on normal images the Gaussians did not see: each training image's
        leave-one-out distance, from its in-sample distance ``q`` by the Sherman–Morrison identity. Leaving image
        ``i`` out moves the mean by ``−dᵢ/(n−1)`` and takes ``w·dᵢ·dᵢᵀ/(n−1)`` off the covariance (``w``: the
        weight of the empirical part; the ridge's own change is neglected), so its distance² becomes
        ``(n/(n−1))² · q / (1 − w·q/(n−1))``. In-sample distances are much smaller than those of new normal images
        when there are few images per location (and, with the ridge, fewer images than channels); the Gaussian
        term would then outweigh the discriminator.
        """
        if isinstance(batches, Iterator):
            batches = list(batches)
        moments, seen = LocationMoments(self.gaussian_dim, self.estimator), 0
        for batch in batches:
            moments.update(self.kept_channels(batch.detach().float().cpu()))
            seen += len(batch)
        if count is not None and seen != count:
            msg = f"location Gaussian: told {count} training images, got {seen}"
            raise ValueError(msg)
        if seen < 3:
            msg = f"location Gaussian needs at least 3 training images (one left out of at least 2), got {seen}"
            raise ValueError(msg)
        weights = self._set_gaussians(moments).to(self.mean.device)
        distances = torch.cat([self.leave_one_out_distance(rows.float().to(self.mean.device), weights, seen)
                               for batch in batches for rows in batch.detach().split(32)])
        self.gaussian_stats.copy_(torch.stack([distances.mean(), distances.std().clamp_min(1e-6)]))
        return self

    def leave_one_out_distance(self, features: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
        """Distances ``(N, 1, h, w)`` of the ``count`` training images' features ``(N, D, h, w)`` to Gaussians fitted
        without them (see :meth:`fit`); ``weights`` ``(G,)``: the empirical covariance's weight per location."""
        squared = self.distance(features).square()
        shrink = (weights.reshape(1, 1, *squared.shape[-2:]) * squared / (count - 1)).to(squared.dtype)
        left_out = squared / (1 - shrink).clamp_min(torch.finfo(squared.dtype).eps)
        return (count / (count - 1)) * left_out.sqrt()

    def _set_gaussians(self, moments: LocationMoments) -> torch.Tensor:
        """Take the Gaussians of ``moments``, written into the buffers when their size already fits; returns the
        empirical covariance's weight per location ``(G,)``."""
        locations, device = moments.shift.shape[0], self.mean.device
        if tuple(self.whitening.shape) == (locations, self.gaussian_dim, self.gaussian_dim) and device.type == "cpu":
            return moments.gaussians(out=(self.mean, self.whitening))[2]
        mean, whitening, weights = moments.gaussians()
        self.mean, self.whitening = mean.to(device), whitening.to(device)
        return weights

    def kept_channels(self, features: torch.Tensor) -> torch.Tensor:
        """The channels the Gaussians model, of features ``(N, D, h, w)``; features that hold only those already
        (``(N, C, h, w)``, a subset's width) pass as they are, so that a fit can collect the subset alone."""
        subset_width = self.channels is not None and features.dim() == 4 and features.shape[1] == self.gaussian_dim
        if subset_width:
            return features
        if features.dim() != 4 or features.shape[1] != self.dim:
            msg = (f"location Gaussian: expected features (N, {self.dim}, h, w) (the model was built for {self.dim} "
                   f"channels), got {tuple(features.shape)}")
            raise ValueError(msg)
        return features if self.channels is None else features.index_select(1, self.channels)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances ``(N, 1, h, w)`` of features ``(N, D, h, w)`` to their locations' Gaussians."""
        if not self.fitted:
            msg = "location Gaussian is not fitted: fit SimpleNet (it fits it at the start of fit) or call fit()"
            raise RuntimeError(msg)
        features = self.kept_channels(features)
        count, _, height, width = features.shape
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
