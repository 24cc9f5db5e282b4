"""Running per-location sums of feature maps, from which one Gaussian per location is fitted (ridge or Ledoit–Wolf).

The location Gaussian's fit needs, per location, the mean, the covariance and, for Ledoit–Wolf's shrinkage only, the
sum of ``‖x − mean‖⁴``; all three follow from running sums of ``y``, ``y·yᵀ``, ``‖y‖²·y`` and ``‖y‖⁴``. So the
training features stream through batch by batch and only the ``(G, D, D)`` sums are kept, however many images
there are, instead of every image's ``(D, h, w)`` features. The sums are kept in float64 and taken around a shift
(the first batch's mean per location), so the covariance does not come from the difference of two large numbers.
"""

from __future__ import annotations

import torch

from anomalib_simplenet.components.mahalanobis import (
    COVARIANCE_EPS,
    check_estimator,
    ledoit_wolf_shrinkage,
    ridge_covariance,
)

LOCATION_CHUNK = 64  # locations updated or turned into Gaussians at once: bounds the float64 temporaries


class LocationMoments:
    """Float64 running sums over images of feature maps ``(n, D, h, w)``, one set per location ``G = h·w``.

    Args:
        dim: feature length ``D``.
        estimator: the covariance estimator of :meth:`gaussians`, ``"ridge"`` or ``"ledoit_wolf"`` (only the latter
            keeps the fourth-moment sums).
    """

    def __init__(self, dim: int, estimator: str = "ridge") -> None:
        self.dim = dim
        self.estimator = check_estimator(estimator)
        self.count = 0
        self.shift: torch.Tensor | None = None  # (G, D)
        self.sums: torch.Tensor | None = None  # Σ y (G, D)
        self.products: torch.Tensor | None = None  # Σ y·yᵀ (G, D, D)
        self.weighted: torch.Tensor | None = None  # Σ ‖y‖²·y (G, D)
        self.fourth: torch.Tensor | None = None  # Σ ‖y‖⁴ (G,)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Add feature maps ``(n, D, h, w)`` of ``n`` images."""
        if features.dim() != 4 or features.shape[1] != self.dim:
            msg = f"location Gaussian: expected features (n, {self.dim}, h, w), got {tuple(features.shape)}"
            raise ValueError(msg)
        if not torch.isfinite(features).all():
            msg = "location Gaussian: features contain NaN or inf; cannot fit the Gaussians"
            raise ValueError(msg)
        samples = features.detach().flatten(2).permute(2, 0, 1)  # (G, n, D), a view
        if self.shift is None:
            locations, device = samples.shape[0], samples.device
            self.shift = samples.double().mean(dim=1)
            self.sums = torch.zeros(locations, self.dim, dtype=torch.float64, device=device)
            self.products = torch.zeros(locations, self.dim, self.dim, dtype=torch.float64, device=device)
            if self.estimator == "ledoit_wolf":
                self.weighted = torch.zeros(locations, self.dim, dtype=torch.float64, device=device)
                self.fourth = torch.zeros(locations, dtype=torch.float64, device=device)
        elif samples.shape[0] != self.shift.shape[0]:
            msg = f"location Gaussian: a {samples.shape[0]}-location batch after {self.shift.shape[0]}-location ones"
            raise ValueError(msg)
        for start in range(0, samples.shape[0], LOCATION_CHUNK):  # float64 temporaries of g·n·D values, not G·n·D
            chunk = slice(start, start + LOCATION_CHUNK)
            shifted = samples[chunk].double() - self.shift[chunk, None]
            self.sums[chunk] += shifted.sum(dim=1)
            self.products[chunk].baddbmm_(shifted.transpose(1, 2), shifted)
            if self.fourth is not None:
                squared_norms = shifted.square().sum(dim=2)  # (g, n)
                self.weighted[chunk] += (squared_norms[..., None] * shifted).sum(dim=1)
                self.fourth[chunk] += squared_norms.square().sum(dim=1)
        self.count += len(features)

    def gaussians(
        self, out: tuple[torch.Tensor, torch.Tensor] | None = None, eps: float = COVARIANCE_EPS
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means ``(G, D)`` and whitening factors ``(G, D, D)`` (Cholesky ``L`` of each precision ``L·Lᵀ``) of the
        Gaussians of the images added so far (covariance by the estimator, see
        :mod:`anomalib_simplenet.components.mahalanobis`), written into ``out`` when given (float32 else), and the
        weights ``(G,)`` of the empirical covariance in each (1 for the ridge, 1 − shrinkage for Ledoit–Wolf)."""
        if self.shift is None or self.count < 2:
            msg = f"location Gaussian: need at least 2 images to fit a Gaussian, got {self.count}"
            raise ValueError(msg)
        locations = self.shift.shape[0]
        if out is None:
            out = (torch.empty(locations, self.dim), torch.empty(locations, self.dim, self.dim))
        means, factors = out
        weights = torch.ones(locations, dtype=torch.float64)
        variance = self._mean_variance()
        for start in range(0, locations, LOCATION_CHUNK):
            chunk = slice(start, start + LOCATION_CHUNK)
            mean = self.sums[chunk] / self.count  # of the shifted features
            products = self.products[chunk]
            empirical = products / self.count - mean[:, :, None] * mean[:, None, :]
            if self.estimator == "ridge":
                covariance = ridge_covariance(empirical, variance)
            else:
                covariance, shrinkage = ledoit_wolf_shrinkage(empirical, self._fourth(chunk, mean), self.count)
                weights[chunk] = 1 - shrinkage.cpu()
            covariance = covariance + eps * torch.eye(self.dim, dtype=covariance.dtype, device=covariance.device)
            means[chunk] = self.shift[chunk] + mean
            factors[chunk] = torch.linalg.cholesky(torch.linalg.inv(covariance))
        return means, factors, weights

    def _mean_variance(self) -> float:
        """Variance of the features added so far, averaged over locations and channels (the ridge's unit)."""
        mean = self.sums / self.count  # (G, D) of the shifted features
        second = self.products.diagonal(dim1=1, dim2=2) / self.count
        return float((second - mean.square()).mean())

    def _fourth(self, chunk: slice, mean: torch.Tensor) -> torch.Tensor:
        """``Σ‖y − m‖⁴`` ``(g,)`` of the locations in ``chunk`` around their means ``m`` ``(g, D)`` (of the shifted
        features), expanded in the running sums: ``Σ(‖y‖² − 2·m·y + ‖m‖²)²``."""
        products = self.products[chunk]
        mean_norm = mean.square().sum(dim=1)
        mean_products = (mean[:, None, :] @ products @ mean[:, :, None])[:, 0, 0]
        trace = products.diagonal(dim1=1, dim2=2).sum(dim=1)
        return (
            self.fourth[chunk]
            - 4 * (mean * self.weighted[chunk]).sum(dim=1)
            + 4 * mean_products
            + 2 * mean_norm * trace
            - 4 * mean_norm * (mean * self.sums[chunk]).sum(dim=1)
            + self.count * mean_norm**2
        )
