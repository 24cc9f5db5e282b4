"""Upsample SimpleNet's per-location scores to the input size and smooth them."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """``(N, 1, h, w)`` scores → ``(N, 1, H, W)`` map: bilinear upsampling, then Gaussian blur (σ pixels).

    Only this one-channel map is upsampled to full resolution, never the feature maps.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.blur = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=2 * int(4.0 * sigma + 0.5) + 1) if sigma > 0 else None

    def forward(self, scores: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return the smoothed anomaly map at ``image_size``."""
        anomaly_map = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map
