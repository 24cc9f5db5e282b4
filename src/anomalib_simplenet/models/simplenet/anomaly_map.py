"""Upsample SimpleNet's per-location scores to the input size and smooth them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_simplenet.components.blur import anomaly_map_blur
from anomalib_simplenet.components.grid_geometry import resample


class AnomalyMapGenerator(nn.Module):
    """``(N, 1, h, w)`` scores → ``(N, 1, H, W)`` map: bilinear upsampling, then Gaussian blur (σ pixels).

    Only this one-channel map is upsampled to full resolution, never the feature maps.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.blur = anomaly_map_blur(sigma)

    def forward(
        self, scores: torch.Tensor, image_size: tuple[int, int] | torch.Size, geometry: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the smoothed anomaly map at ``image_size``.

        ``geometry`` ``(2, 2)``: the score cells' input positions (offset, stride per axis); each pixel then
        reads the scores where it lies. ``None``: ``F.interpolate(align_corners=False)`` (the official maths).
        """
        if geometry is not None:
            anomaly_map = resample(scores, tuple(image_size), geometry)
        else:
            anomaly_map = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map
