"""SimpleNet's synthetic anomalies: Gaussian noise added to normal features, σ absolute or relative to their scale."""

from __future__ import annotations

import torch
from torch import nn

# σ as a fraction of the features' scale: a sizeable fraction, where lite0 at the official 0.015 (1/200 of its
# scale) learns nothing. 0.4 had the best mean validation image AUROC of 0.2 / 0.4 / 0.8 over magnetic_tile,
# elpv_mono and elpv_poly with EfficientNet-Lite0 (benchmarks/simplenet_sweep.py); no test image was read.
DEFAULT_RELATIVE_NOISE_STD = 0.4


class AnomalyFeatureGenerator(nn.Module):
    """Synthetic anomalies in feature space: ``features + N(0, σ²)``, used in training only.

    σ is either absolute (``noise_std``, the official code's 0.015 for ``wide_resnet50_2``) or, when
    ``noise_std`` is ``None``, ``relative_noise_std × feature_scale``: a fraction of the training features'
    scale (see :mod:`anomalib_simplenet.models.simplenet.feature_scale`), so one default suits every backbone. The
    scale is a buffer (saved in checkpoints, unused at inference); it is 0 until measured.
    """

    def __init__(
        self, noise_std: float | None = None, relative_noise_std: float = DEFAULT_RELATIVE_NOISE_STD
    ) -> None:
        super().__init__()
        if noise_std is not None and noise_std <= 0:
            msg = f"noise_std must be > 0 (or None for noise relative to the feature scale), got {noise_std}"
            raise ValueError(msg)
        if relative_noise_std <= 0:
            msg = f"relative_noise_std must be > 0, got {relative_noise_std}"
            raise ValueError(msg)
        self.noise_std = noise_std
        self.relative_noise_std = relative_noise_std
        self.register_buffer("feature_scale", torch.tensor(0.0))

    @property
    def relative(self) -> bool:
        """True when σ follows the feature scale (no absolute ``noise_std`` given)."""
        return self.noise_std is None

    @property
    def measured(self) -> bool:
        """True once the feature scale has been set."""
        return bool(self.feature_scale > 0)

    def set_feature_scale(self, scale: torch.Tensor | float) -> None:
        """Store the training features' scale (a positive number)."""
        scale = torch.as_tensor(scale, dtype=self.feature_scale.dtype)
        if not torch.isfinite(scale) or scale <= 0:
            msg = f"feature scale must be finite and > 0, got {float(scale)} (constant or broken features?)"
            raise ValueError(msg)
        self.feature_scale.copy_(scale)

    def sigma(self) -> torch.Tensor | float:
        """σ of the noise: ``noise_std``, or ``relative_noise_std × feature_scale``."""
        if self.noise_std is not None:
            return self.noise_std
        if not self.measured:
            msg = (
                "relative noise needs the training features' scale: fit through SimpleNet (it measures it at the "
                "start of fit), call set_feature_scale, or pass an absolute noise_std"
            )
            raise RuntimeError(msg)
        return self.relative_noise_std * self.feature_scale

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``N(0, σ²)`` noise shaped like ``like``; from ``generator`` when given, else the global RNG."""
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return noise * self.sigma()

    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``features`` plus i.i.d. Gaussian noise of the same shape."""
        return features + self.noise(features, generator)
