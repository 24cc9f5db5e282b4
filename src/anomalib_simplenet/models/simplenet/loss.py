"""SimpleNet's truncated L1 loss."""

from __future__ import annotations

import torch
from torch import nn


class TruncatedL1Loss(nn.Module):
    """``mean(max(0, m − D(normal))) + mean(max(0, m + D(noised)))``.

    The discriminator is pushed above ``+m`` on normal features and below ``−m`` on noised ones; points
    already beyond the margin contribute nothing, so easy samples stop pulling on the boundary.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, normal_scores: torch.Tensor, noised_scores: torch.Tensor) -> torch.Tensor:
        """Loss from discriminator outputs of any (matching) shape."""
        normal_loss = torch.clamp(self.margin - normal_scores, min=0).mean()
        noised_loss = torch.clamp(self.margin + noised_scores, min=0).mean()
        return normal_loss + noised_loss
