"""Scale of a set of feature maps, from per-sample sums, for noise that is relative to the features.

The scale is the root-mean-square of the per-dimension standard deviations,
``sqrt(mean_c Var_c)`` over every location of every image: the typical size of a feature's deviation from its
mean, whatever the backbone (post-ReLU ResNet features are ~0.1-1, EfficientNet-Lite's linear bottleneck
outputs ~7). It is accumulated from per-sample sums and counts, so shards of the data (e.g. the ranks of a
distributed run) can be summed first and reduced once with :func:`scale_from_moments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from anomalib_simplenet.components.distributed import batch_keys, sum_over_samples


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


def batch_scale(features: torch.Tensor) -> torch.Tensor:
    """Scale of one batch of feature maps ``(N, D, h, w)`` on this process alone."""
    values = features.detach().double().transpose(0, 1).flatten(1)  # (D, N·h·w)
    return scale_from_moments(values.sum(dim=1), values.square().sum(dim=1), values.shape[1])


@dataclass
class FeatureMoments:
    """Per-image channel sums of feature maps ``(N, D, h, w)``: sums, sums of squares, locations, image keys.

    Rows are kept per image (``N × D`` floats, small) so that :meth:`scale` can total them over the ranks of a
    distributed run with each image counted once, whatever padding the distributed sampler added.
    """

    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        """Images added on this rank."""
        return len(self.keys)

    def update(self, features: torch.Tensor, paths: Sequence[Any] | None = None) -> None:
        """Add a batch of feature maps ``(N, D, h, w)`` (float64 sums: thousands of images stay exact enough)."""
        values = features.detach().double().flatten(2)  # (N, D, h·w)
        counts = torch.full((len(values),), values.shape[2], dtype=torch.float64)
        self.rows.append((values.sum(dim=2).cpu(), values.square().sum(dim=2).cpu(), counts))
        self.keys += batch_keys(paths, len(values), len(self.keys))

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureMoments:
        """Moments of one batch ``(N, D, h, w)``."""
        moments = cls()
        moments.update(features)
        return moments

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel sums ``(D,)``, sums of squares ``(D,)`` and the location count over all ranks' images.

        A collective under DDP: every rank must call it.
        """
        if not self.rows:
            msg = "feature scale: no features were added"
            raise ValueError(msg)
        sums, squares, counts = (torch.cat(parts) for parts in zip(*self.rows, strict=True))
        return sum_over_samples(self.keys, sums, squares, counts)

    def scale(self) -> torch.Tensor:
        """The scale of everything added so far, on every rank (a 0-d float tensor)."""
        return scale_from_moments(*self.totals())
