"""UNetAE's reconstruction loss: weighted L2 + SSIM."""

from __future__ import annotations

import torch
from torch import nn

from .ssim import SSIMMap


def check_l2_ssim_weights(weights: dict[str, float]) -> None:
    """Weights of an L2 and an SSIM term, by argument name: each >= 0, not all 0."""
    for name, value in weights.items():
        if value < 0:
            msg = f"{name} must be >= 0, got {value}"
            raise ValueError(msg)
    if not any(weights.values()):
        msg = f"{' and '.join(weights)} cannot all be 0"
        raise ValueError(msg)


class ReconstructionLoss(nn.Module):
    """``l2_weight · MSE(x̂, x) + ssim_weight · mean(1 − SSIM(x̂, x))``; zero iff ``x̂ == x``.

    L2 alone gives blurry reconstructions whose error concentrates on edges of normal texture; the SSIM term
    rewards matching local structure, so normal texture is reproduced and defects stand out.

    Args:
        l2_weight: weight of the mean squared error.
        ssim_weight: weight of the SSIM term.
        ssim: the SSIM module (shared with the anomaly-map generator so both use the same window).
    """

    def __init__(self, ssim: SSIMMap, l2_weight: float = 1.0, ssim_weight: float = 1.0) -> None:
        super().__init__()
        check_l2_ssim_weights({"l2_weight": l2_weight, "ssim_weight": ssim_weight})
        self.ssim = ssim
        self.l2_weight = l2_weight
        self.ssim_weight = ssim_weight

    def terms(self, reconstruction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted per-image ``(MSE, 1 − mean SSIM)``, each ``(N,)``, of images ``(N, C, H, W)``."""
        l2 = (reconstruction - target).pow(2).flatten(1).mean(dim=1)
        ssim = 1 - self.ssim(reconstruction, target).flatten(1).mean(dim=1)
        return l2, ssim

    def per_image(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted loss of each image ``(N,)``."""
        l2, ssim = self.terms(reconstruction, target)
        return self.l2_weight * l2 + self.ssim_weight * ssim

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean weighted loss (scalar)."""
        return self.per_image(reconstruction, target).mean()
