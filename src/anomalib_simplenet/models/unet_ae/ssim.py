"""Per-pixel SSIM with a fixed Gaussian window, built from grouped convolutions only (ONNX/OpenVINO friendly)."""

from __future__ import annotations

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn


class SSIMMap(nn.Module):
    """Local SSIM (Wang et al. 2004) of two images ``(N, C, H, W)`` → ``(N, C, H, W)`` in ``[-1, 1]``.

    Args:
        channels: image channels ``C``.
        window_size: side of the Gaussian window (odd).
        sigma: σ of the Gaussian window.
        data_range: value range of the images (1.0 for ``[0, 1]`` inputs); sets the stabilising constants.
    """

    def __init__(self, channels: int = 3, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> None:
        super().__init__()
        if window_size < 3 or window_size % 2 == 0:
            msg = f"ssim window_size must be an odd int >= 3, got {window_size}"
            raise ValueError(msg)
        self.channels = channels
        # One grouped convolution blurs x, y, x², y² and xy together: five statistics per channel.
        self.window = GaussianBlur2d(sigma=sigma, channels=5 * channels, kernel_size=window_size)
        # The window is a constant: keep it out of checkpoints. (GaussianBlur2d stores it as an expanded view,
        # which load_state_dict cannot copy into when channels > 1.)
        kernel = self.window.kernel.contiguous()
        del self.window.kernel
        self.window.register_buffer("kernel", kernel, persistent=False)
        self.c1 = (0.01 * data_range) ** 2
        self.c2 = (0.03 * data_range) ** 2

    def forward(self, image: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """SSIM map; exactly 1 where ``image == other``."""
        stats = self.window(torch.cat([image, other, image * image, other * other, image * other], dim=1))
        mu_x, mu_y, xx, yy, xy = stats.split(self.channels, dim=1)
        var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
        numerator = (2 * mu_x * mu_y + self.c1) * (2 * cov + self.c2)
        denominator = (mu_x * mu_x + mu_y * mu_y + self.c1) * (var_x + var_y + self.c2)
        return numerator / denominator
