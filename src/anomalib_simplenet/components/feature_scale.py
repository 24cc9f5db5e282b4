"""Scale of a set of feature maps, from per-sample sums, for noise that is relative to the features.

The scale is the root-mean-square of the per-dimension standard deviations,
``sqrt(mean_c Var_c)`` over every location of every image: the typical size of a feature's deviation from its
mean, whatever the backbone (post-ReLU ResNet features are ~0.1-1, EfficientNet-Lite's linear bottleneck
outputs ~7). It is accumulated from per-sample sums and counts, so shards of the data (e.g. the ranks of a
distributed run) can be summed first and reduced once with :func:`scale_from_moments`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def scale_from_moments(sums: torch.Tensor, squares: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """``sqrt(mean_c Var_c)`` from per-channel sums ``(D,)``, sums of squares ``(D,)`` and the location count.

    The only reduction of the statistic: a distributed run all-reduces the three inputs and calls this.
    """
    count = torch.as_tensor(count, dtype=torch.float64)
    if float(count) <= 1:
        msg = f"feature scale needs more than one feature location, got {float(count):.0f}"
        raise ValueError(msg)
    mean = sums.double() / count
    variance = (squares.double() / count - mean.square()).clamp(min=0) * (count / (count - 1))
    return variance.mean().sqrt().float()


@dataclass
class FeatureMoments:
    """Running per-channel sums of feature maps ``(N, D, h, w)``: sums, sums of squares, number of locations."""

    sums: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count: int = 0
    images: int = 0

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of feature maps ``(N, D, h, w)`` (float64 sums: thousands of images stay exact enough)."""
        values = features.detach().double().transpose(0, 1).flatten(1)  # (D, N·h·w)
        sums, squares = values.sum(dim=1).cpu(), values.square().sum(dim=1).cpu()
        self.sums = sums if self.sums is None else self.sums + sums
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += values.shape[1]
        self.images += len(features)

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureMoments:
        """Moments of one batch ``(N, D, h, w)``."""
        moments = cls()
        moments.update(features)
        return moments

    def scale(self) -> torch.Tensor:
        """The scale of everything added so far (a 0-d float tensor)."""
        if self.sums is None or self.squares is None:
            msg = "feature scale: no features were added"
            raise ValueError(msg)
        return scale_from_moments(self.sums, self.squares, self.count)
