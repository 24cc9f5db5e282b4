"""Per-pixel reconstruction error (L2 and SSIM based), smoothed, and the image score taken from it."""

from __future__ import annotations

import torch
from torch import nn

from anomalib_simplenet.components.blur import anomaly_map_blur

from .loss import check_l2_ssim_weights
from .ssim import SSIMMap

SCORE_MODES = ("max", "topk_mean")


class AnomalyMapGenerator(nn.Module):
    """Images and reconstructions ``(N, C, H, W)`` → anomaly map ``(N, 1, H, W)``.

    ``map = l2_weight · RMS_c(x − x̂) + ssim_weight · mean_c((1 − SSIM(x, x̂)) / 2)``, then a Gaussian blur.
    Both terms lie in ``[0, 1]`` for ``[0, 1]`` images (the RMS over channels rather than the squared error,
    which would be orders of magnitude smaller than the SSIM term), so the weights mean what they say.

    Args:
        ssim: the SSIM module.
        l2_weight: weight of the per-pixel RMS error.
        ssim_weight: weight of the per-pixel structural dissimilarity.
        sigma: σ (pixels) of the Gaussian smoothing; 0 disables it.
    """

    def __init__(self, ssim: SSIMMap, l2_weight: float = 0.5, ssim_weight: float = 0.5, sigma: float = 4.0) -> None:
        super().__init__()
        check_l2_ssim_weights({"map_l2_weight": l2_weight, "map_ssim_weight": ssim_weight})
        if sigma < 0:
            msg = f"anomaly_map_sigma must be >= 0, got {sigma}"
            raise ValueError(msg)
        self.ssim = ssim
        self.l2_weight = l2_weight
        self.ssim_weight = ssim_weight
        self.sigma = sigma
        self.blur = anomaly_map_blur(sigma)

    def forward(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Smoothed error map ``(N, 1, H, W)`` at the input resolution."""
        rms = (images - reconstruction).pow(2).mean(dim=1, keepdim=True).sqrt()
        dssim = ((1 - self.ssim(images, reconstruction)) / 2).clamp(0, 1).mean(dim=1, keepdim=True)
        anomaly_map = self.l2_weight * rms + self.ssim_weight * dssim
        # The blur pads by reflection, which needs the image to be larger than half the kernel.
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map


def image_score(anomaly_map: torch.Tensor, score_mode: str = "max", top_k: int = 100) -> torch.Tensor:
    """Image scores ``(N,)`` from maps ``(N, 1, H, W)``: the maximum, or the mean of the ``top_k`` largest pixels."""
    flat = anomaly_map.flatten(1)
    if score_mode == "max":
        return flat.amax(dim=1)
    if score_mode == "topk_mean":
        return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)
    msg = f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}"
    raise ValueError(msg)
