"""Upsample SimpleNet's per-location scores to the input size and smooth them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d
from torch import nn


class SeparableGaussianBlur2d(GaussianBlur2d):
    """anomalib's ``GaussianBlur2d`` (same kernel buffer, same padding, same result) run as two 1-D passes.

    A Gaussian kernel is the outer product of two 1-D kernels, so a ``k×k`` convolution equals a ``1×k`` then a
    ``k×1`` one: ``2k`` instead of ``k²`` multiplications per pixel (σ=4: 66 instead of 1089), which matters at
    full resolution. The 1-D kernels are the 2-D kernel's row and column sums (constants in an exported graph).
    """

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``(N, C, H, W)`` to the same shape (``padding="same"``)."""
        if self.padding != "same":
            return super().forward(input_tensor)
        kernel = self.kernel  # (C, 1, kh, kw), a normalised outer product
        padded = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        horizontal = F.conv2d(padded, kernel.sum(dim=2, keepdim=True), groups=self.channels)
        return F.conv2d(horizontal, kernel.sum(dim=3, keepdim=True), groups=self.channels)


class AnomalyMapGenerator(nn.Module):
    """``(N, 1, h, w)`` scores → ``(N, 1, H, W)`` map: bilinear upsampling, then Gaussian blur (σ pixels).

    Only this one-channel map is upsampled to full resolution, never the feature maps.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = sigma
        kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
        self.blur = SeparableGaussianBlur2d(sigma=sigma, channels=1, kernel_size=kernel_size) if sigma > 0 else None

    def forward(self, scores: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return the smoothed anomaly map at ``image_size``."""
        anomaly_map = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map
