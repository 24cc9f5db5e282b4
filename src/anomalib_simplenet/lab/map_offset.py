"""Map offset: the centroid of an anomaly map's hottest ``top_fraction`` of pixels minus that of the defect's mask,
in pixels (positive: right of / below the defect); a misplaced feature grid shows as the same sign on every image."""

from __future__ import annotations

import torch

DEFAULT_TOP_FRACTION = 0.01


def _centroids(weights: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` centroids ``(x, y)`` of ``(N, H, W)`` non-negative weights."""
    height, width = weights.shape[-2:]
    ys, xs = (torch.arange(n, dtype=weights.dtype, device=weights.device) for n in (height, width))
    mass = weights.sum(dim=(1, 2))
    return torch.stack([(weights.sum(dim=1) * xs).sum(dim=1) / mass, (weights.sum(dim=2) * ys).sum(dim=1) / mass], 1)


def map_offsets(
    anomaly_maps: torch.Tensor, masks: torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION
) -> torch.Tensor:
    """Signed offsets ``(M, 2)`` ``(dx, dy)`` in pixels, one per image whose mask is not empty, of ``(N, H, W)`` or
    ``(N, 1, H, W)`` maps (higher = more anomalous) against masks of the same size (non-zero = defect)."""
    maps = anomaly_maps.detach().double().reshape(len(anomaly_maps), *anomaly_maps.shape[-2:])
    truth = (masks.detach().reshape(len(masks), *masks.shape[-2:]) > 0).double()
    if maps.shape != truth.shape:
        msg = f"map_offsets: anomaly_maps {tuple(anomaly_maps.shape)} and masks {tuple(masks.shape)} differ in size"
        raise ValueError(msg)
    if not 0 < top_fraction <= 1:
        msg = f"map_offsets: top_fraction must be in (0, 1], got {top_fraction}"
        raise ValueError(msg)
    defective = truth.flatten(1).sum(dim=1) > 0
    maps, truth = maps[defective], truth[defective]
    if not len(maps):
        return torch.zeros(0, 2, dtype=torch.float64)
    count = max(1, round(top_fraction * maps[0].numel()))
    hot = (maps >= maps.flatten(1).topk(count, dim=1).values[:, -1, None, None]).double()
    return _centroids(hot) - _centroids(truth)


def mean_map_offset(
    anomaly_maps: torch.Tensor, masks: torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION
) -> tuple[float, float]:
    """Mean signed offset ``(dx, dy)`` in pixels over the defective images (NaN if there are none)."""
    offsets = map_offsets(anomaly_maps, masks, top_fraction)
    mean = offsets.mean(dim=0) if len(offsets) else torch.full((2,), float("nan"))
    return float(mean[0]), float(mean[1])
