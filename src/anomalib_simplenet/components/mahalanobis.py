"""Mahalanobis distance to a Gaussian fitted on normal embeddings, with Ledoit–Wolf shrinkage or a ridge.

One implementation for the whole package (DistillClassifier, UNetAE, SimpleNet's location Gaussian, analyses). The
Gaussian is fitted in torch, batched over any number of independent groups (e.g. one per feature-map location), and
kept in buffers so that it is saved in checkpoints and exported with the model.

Two covariance estimators: Ledoit–Wolf shrinks towards a scaled identity by as much as the sample's noise calls for;
with fewer samples than dimensions it shrinks nearly all the way, and the distance then forgets the directions in
which normal data hardly varies. The ridge (Padim's: empirical covariance plus a small multiple of the identity)
keeps them: a feature off the span of the normal samples is far away, which is what sets anomalies apart when
each Gaussian sees only a few dozen images (one per feature-map location).
"""

from __future__ import annotations

import torch
from torch import nn

# Most sample values (N·g·D) fitted at once; 16 Mi doubles = 128 MiB per temporary.
FIT_CHUNK_ELEMENTS = 2**24
COVARIANCE_EPS = 1e-6  # added to the covariance diagonal before inversion, for numerical safety
# The ridge in units of the mean variance: Padim's 0.01 is absolute, for features of about unit variance.
RELATIVE_RIDGE = 0.01
ESTIMATORS = ("ledoit_wolf", "ridge")


def ledoit_wolf_covariance(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrunk covariance of ``samples`` ``(G, N, D)`` (G groups of N samples), as sklearn's ``LedoitWolf``.

    Returns:
        Covariances ``(G, D, D)`` and shrinkage coefficients ``(G,)``.
    """
    count = samples.shape[1]
    centred = samples - samples.mean(dim=1, keepdim=True)
    empirical = centred.transpose(1, 2) @ centred / count
    fourth = centred.square().sum(dim=2).square().sum(dim=1)  # Σ_n ‖c_n‖⁴
    return ledoit_wolf_shrinkage(empirical, fourth, count)


def ledoit_wolf_shrinkage(
    empirical: torch.Tensor, fourth: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ledoit–Wolf shrunk covariance from a sample's moments, so that it can be fitted from running sums.

    Args:
        empirical: empirical covariances ``(G, D, D)`` (centred, divided by ``count``).
        fourth: ``(G,)`` sums over the samples of ``‖x − mean‖⁴``.
        count: samples per group ``N``.

    Returns:
        Covariances ``(G, D, D)`` and shrinkage coefficients ``(G,)``.
    """
    groups, dim, _ = empirical.shape
    trace = empirical.diagonal(dim1=1, dim2=2).sum(dim=1)  # Σ_n ‖c_n‖² / N
    mu = trace / dim
    delta_sum = (empirical**2).sum(dim=(1, 2))
    beta = (fourth / count - delta_sum) / (dim * count)
    delta = (delta_sum - 2 * mu * trace + dim * mu**2) / dim
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(delta > 0, beta / delta.clamp_min(torch.finfo(delta.dtype).tiny), torch.zeros_like(delta))
    identity = torch.eye(dim, dtype=empirical.dtype, device=empirical.device).expand(groups, dim, dim)
    covariance = (1 - shrinkage)[:, None, None] * empirical + (shrinkage * mu)[:, None, None] * identity
    return covariance, shrinkage


def ridge_covariance(
    empirical: torch.Tensor, mean_variance: torch.Tensor | float, relative: float = RELATIVE_RIDGE
) -> torch.Tensor:
    """Empirical covariances ``(G, D, D)`` plus ``relative × mean_variance`` on the diagonal: full rank whatever the
    number of samples.

    ``mean_variance`` is the features' variance averaged over channels *and groups*, so that one value serves
    every backbone (scale-free) and every group gets the same ridge: a ridge scaled per group would make
    groups of nearly constant features (a flat background's locations) the most sensitive of all.
    """
    identity = torch.eye(empirical.shape[-1], dtype=empirical.dtype, device=empirical.device)
    return empirical + relative * float(mean_variance) * identity


def mean_variance(samples: torch.Tensor) -> torch.Tensor:
    """Variance of samples ``(N, G, D)`` over ``N``, averaged over groups and channels (the ridge's unit)."""
    return samples.double().var(dim=0, unbiased=False).mean()


def check_estimator(estimator: str) -> str:
    """``estimator`` if it names a covariance estimator, else a ValueError naming the argument."""
    if estimator not in ESTIMATORS:
        msg = f"covariance estimator must be one of {ESTIMATORS}, got {estimator!r}"
        raise ValueError(msg)
    return estimator


class MahalanobisDistance(nn.Module):
    """Distance of embeddings to Gaussians fitted on normal data.

    Args:
        dim: embedding length ``D``.
        groups: number of independent Gaussians ``G`` (1 for image embeddings; ``H·W`` for one per location).
        eps: added to the covariance diagonal before inversion, for numerical safety.
        estimator: ``"ledoit_wolf"`` or ``"ridge"`` (see the module's docstring).
    """

    def __init__(self, dim: int, groups: int = 1, eps: float = COVARIANCE_EPS, estimator: str = "ledoit_wolf") -> None:
        super().__init__()
        self.eps = eps
        self.estimator = check_estimator(estimator)
        self.register_buffer("mean", torch.zeros(groups, dim))
        self.register_buffer("precision", torch.eye(dim).repeat(groups, 1, 1))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor) -> MahalanobisDistance:
        """Fit on normal embeddings ``(N, G, D)`` (or ``(N, D)`` when ``G == 1``)."""
        if embeddings.dim() == 2:
            embeddings = embeddings[:, None]
        count, groups, dim = embeddings.shape
        if (groups, dim) != tuple(self.mean.shape):
            msg = f"embeddings of shape (N, {groups}, {dim}) do not match (groups, dim) = {tuple(self.mean.shape)}"
            raise ValueError(msg)
        if count < 2:
            msg = f"need at least 2 normal embeddings to fit a Gaussian, got {count}"
            raise ValueError(msg)
        if not torch.isfinite(embeddings).all():
            msg = "embeddings contain NaN or inf; cannot fit the Gaussian"
            raise ValueError(msg)
        # Groups are independent: fitting a slice of them at a time bounds the double-precision temporaries
        # (samples, centred, squared: a few × N·G·D·8 bytes at once, 1.4 GB each for 700 images on a 64×64 grid).
        step = max(1, FIT_CHUNK_ELEMENTS // (count * dim))
        variance = mean_variance(embeddings) if self.estimator == "ridge" else None
        for start in range(0, groups, step):
            chunk = slice(start, start + step)
            samples = embeddings[:, chunk].double().transpose(0, 1)  # (g, N, D), double for a stable inverse
            if self.estimator == "ridge":
                centred = samples - samples.mean(dim=1, keepdim=True)
                covariance = ridge_covariance(centred.transpose(1, 2) @ centred / count, variance)
            else:
                covariance, _ = ledoit_wolf_covariance(samples)
            covariance = covariance + self.eps * torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
            self.mean[chunk] = samples.mean(dim=1).to(self.mean.dtype)
            self.precision[chunk] = torch.linalg.inv(covariance).to(self.precision.dtype)
        self.fitted.fill_(True)
        return self

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Distances ``(N, G)`` for embeddings ``(N, G, D)``; ``(N,)`` for ``(N, D)`` when ``G == 1``."""
        squeeze = embeddings.dim() == 2
        if squeeze:
            embeddings = embeddings[:, None]
        delta = (embeddings - self.mean).transpose(0, 1)  # (G, N, D)
        # A batched MatMul rather than einsum: OpenVINO runs an exported three-operand Einsum ~7x slower (per-location
        # Gaussians of a 128 px student: ~26 ms of its ~28 ms per image), torch runs both alike.
        squared = (torch.matmul(delta, self.precision) * delta).sum(dim=-1).transpose(0, 1)
        distance = squared.clamp_min(0).sqrt()
        return distance[:, 0] if squeeze else distance
