"""Combine per-stage Mahalanobis distance maps into one smoothed anomaly map at input resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_simplenet.components.blur import anomaly_map_blur
from anomalib_simplenet.components.grid_geometry import resample


class AnomalyMapGenerator(nn.Module):
    """Per-stage distances ``[(N, 1, h_l, w_l)]`` → ``(N, 1, H, W)`` anomaly map.

    Each stage's distance is divided by ``sqrt(D_l)`` (a normal location's Mahalanobis distance is about
    ``sqrt(D_l)``, so stages of different width weigh the same), upsampled to the finest stage's grid and
    averaged; the result is upsampled to the input size and smoothed with a Gaussian of σ pixels. Given the
    stages' grid geometry (cell positions in input pixels, :mod:`~anomalib_simplenet.components.grid_geometry`),
    every resampling reads each map where its cells really are; without it ``F.interpolate(align_corners=False)``
    assumes cell ``i`` of a stride-``s`` map at pixel ``s·i + (s − 1)/2``.

    Args:
        dims: feature length ``D_l`` of each stage, in the order of the maps given to ``forward``.
        sigma: σ (pixels) of the Gaussian smoothing; 0 disables it.
    """

    def __init__(self, dims: Sequence[int], sigma: float = 4.0) -> None:
        super().__init__()
        if sigma < 0:
            msg = f"anomaly_map_sigma must be >= 0, got {sigma}"
            raise ValueError(msg)
        self.register_buffer("scales", torch.tensor([float(d) ** -0.5 for d in dims]), persistent=False)
        self.sigma = sigma
        self.blur = anomaly_map_blur(sigma)

    def forward(
        self,
        distance_maps: Sequence[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
        geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the smoothed anomaly map at ``image_size``; ``geometry`` ``(L, 2, 2)``: the maps' cell positions."""
        finest = max(range(len(distance_maps)), key=lambda i: distance_maps[i].shape[-2] * distance_maps[i].shape[-1])
        grid = distance_maps[finest].shape[-2:]
        resized = [
            m if index == finest else self._resize(m, grid, geometry, index, finest)
            for index, m in enumerate(distance_maps)
        ]
        combined = (torch.stack(resized) * self.scales.view(-1, 1, 1, 1, 1)).mean(dim=0)
        if geometry is not None:
            anomaly_map = resample(combined, tuple(image_size), geometry[finest])
        else:
            anomaly_map = F.interpolate(combined, size=tuple(image_size), mode="bilinear", align_corners=False)
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map

    @staticmethod
    def _resize(
        distance_map: torch.Tensor, grid: torch.Size, geometry: torch.Tensor | None, index: int, finest: int
    ) -> torch.Tensor:
        if geometry is not None:
            return resample(distance_map, grid, geometry[index], geometry[finest])
        return F.interpolate(distance_map, size=tuple(grid), mode="bilinear", align_corners=False)
