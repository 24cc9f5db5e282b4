"""Locally aggregated patch features, as in PatchCore and SimpleNet.

Each location of a feature map is described by its ``k×k`` neighbourhood; the flattened neighbourhood vector
(channel-major: ``c, ky, kx``) is averaged down to a fixed length with adaptive 1-D average pooling, deeper
layers are bilinearly resampled onto the first layer's grid (at the cells' true input positions when a grid
geometry is given, see :mod:`anomalib_simplenet.components.grid_geometry`), and all layers are pooled together to the target
length. Pooling acts on channels and resizing on space, so they commute: we pool *before* resizing, which
gives the same result as the official order at a fraction of the memory.

With the default sizes every pooling group is a whole number of neighbourhood rows, so the ``k·k·C``
neighbourhood vector need not exist at all: a horizontal ``k``-mean, ``k`` vertical shifts and one grouped
mean give the same numbers (see :class:`PatchAggregator`), 3× less memory traffic than unfolding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_simplenet.components.grid_geometry import resample


def adaptive_pool_matrix(in_channels: int, out_channels: int) -> torch.Tensor:
    """Matrix ``(out, in)`` equal to ``F.adaptive_avg_pool1d`` from ``in`` to ``out`` elements."""
    matrix = torch.zeros(out_channels, in_channels)
    for index in range(out_channels):
        start = (index * in_channels) // out_channels
        end = -((-(index + 1) * in_channels) // out_channels)  # ceil division
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


class ChannelPool(nn.Module):
    """Adaptive average pooling over the channel axis of ``(N, C, H, W)`` maps.

    Divisible sizes use a reshape and a mean (cheap, exports to ONNX as ReduceMean); other sizes use the
    exact pooling matrix as a 1×1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.group = in_channels // out_channels if in_channels % out_channels == 0 else 0
        matrix = None if self.group else adaptive_pool_matrix(in_channels, out_channels)[:, :, None, None]
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(N, in, H, W)`` to ``(N, out, H, W)``."""
        if self.group == 1:
            return features
        if self.group:
            batch, _, height, width = features.shape
            return features.reshape(batch, self.out_channels, self.group, height, width).mean(dim=2)
        return F.conv2d(features, self.matrix)


def row_neighbourhoods(features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each location's ``k×k`` neighbourhood with its rows already averaged: ``(N, C, H, W)`` → ``(N, C·k, H, W)``.

    Channel ``c·k + ky`` holds the mean over ``kx`` of neighbourhood row ``ky`` (zero padded), i.e. the
    unfolded vector (order ``c, ky, kx``) with each run of ``k`` consecutive entries averaged.
    """
    if patch_size == 1:
        return features
    pad = patch_size // 2
    batch, channels, height, width = features.shape
    # One copy to NCHW (channels-last backbone output): every step below then writes contiguous planes.
    padded = F.pad(features.contiguous(), (pad, pad))
    rows = padded[..., 0:width]
    for kx in range(1, patch_size):
        rows = rows + padded[..., kx : kx + width]
    # Zero padding and a mean over kx: exactly unfold's zero padding followed by the pooling mean.
    rows = F.pad(rows / patch_size, (0, 0, pad, pad))
    shifted = torch.stack([rows[:, :, ky : ky + height] for ky in range(patch_size)], dim=2)  # (N, C, k, H, W)
    return shifted.reshape(batch, channels * patch_size, height, width)


def neighbourhoods(features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Stack each location's ``k×k`` neighbourhood: ``(N, C, H, W)`` → ``(N, C·k·k, H, W)`` (zero padded)."""
    if patch_size == 1:
        return features
    batch, _, height, width = features.shape
    unfolded = F.unfold(features, kernel_size=patch_size, padding=(patch_size - 1) // 2, stride=1)
    return unfolded.reshape(batch, -1, height, width)


def _fused_row_groups(
    channels: Sequence[int], patch_size: int, pretrain_embed_dim: int, target_embed_dim: int
) -> list[int] | None:
    """Rows per output channel of each layer when both poolings fuse into one mean over whole rows, else ``None``.

    Both poolings are means over equal, contiguous groups when the sizes divide; the merge groups then stay
    inside one layer's block if ``pretrain_embed_dim`` is a multiple of the merge group, and a mean of equal-size
    means is the mean over the union. Layer ``l`` then averages ``G = (k²·C_l / P) · (L·P / T)`` consecutive
    entries of its unfolded vector, which are ``G / k`` whole rows when ``k`` divides ``G``.
    """
    area, layers = patch_size * patch_size, len(channels)
    if (layers * pretrain_embed_dim) % target_embed_dim:
        return None
    merge_group = layers * pretrain_embed_dim // target_embed_dim
    if pretrain_embed_dim % merge_group:
        return None
    rows = []
    for channel in channels:
        if (channel * area) % pretrain_embed_dim:
            return None
        group = channel * area // pretrain_embed_dim * merge_group
        if group % patch_size:
            return None
        rows.append(group // patch_size)
    return rows


class PatchAggregator(nn.Module):
    """Turn a list of backbone maps into one ``(N, target_dim, H₀, W₀)`` map on the first map's grid.

    Args:
        channels: channels of each input layer.
        patch_size: neighbourhood size ``k`` (odd).
        pretrain_embed_dim: per-layer length after pooling the neighbourhood vector.
        target_embed_dim: final length after pooling all layers together.

    When the sizes divide evenly (the defaults do: 4608 → 1536 → 768 and 9216 → 1536 → 768 per layer), the
    two poolings are fused into one mean over whole neighbourhood rows (``fused`` is True); otherwise the
    general unfold-and-pool path runs. Both give the official numbers within float rounding.
    """

    def __init__(
        self,
        channels: Sequence[int],
        patch_size: int = 3,
        pretrain_embed_dim: int = 1536,
        target_embed_dim: int = 1536,
    ) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            msg = f"patch_size must be a positive odd number, got {patch_size}"
            raise ValueError(msg)
        self.patch_size = patch_size
        area = patch_size * patch_size
        self.layer_pools = nn.ModuleList(ChannelPool(c * area, pretrain_embed_dim) for c in channels)
        self.merge_pool = ChannelPool(pretrain_embed_dim * len(channels), target_embed_dim)
        self.out_channels = target_embed_dim
        self.row_groups = _fused_row_groups(channels, patch_size, pretrain_embed_dim, target_embed_dim)

    @property
    def fused(self) -> bool:
        """True when the fast fused path is used."""
        return self.row_groups is not None

    def forward(self, feature_maps: Sequence[torch.Tensor], geometry: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregate ``[(N, C_l, H_l, W_l)]`` into ``(N, target_embed_dim, H₀, W₀)``.

        Args:
            feature_maps: the backbone's maps, the first one setting the output grid.
            geometry: ``(L, 2, 2)`` cell positions of each layer (:mod:`anomalib_simplenet.components.grid_geometry`); deeper layers are then
                sampled where the first layer's cells are. ``None``: ``F.interpolate(align_corners=False)``,
                which assumes cell ``i`` of a stride-``s`` map at pixel ``s·i + (s − 1)/2`` (the official maths).
        """
        if self.row_groups is not None:
            return self._fused_forward(feature_maps, self.row_groups, geometry)
        grid = feature_maps[0].shape[-2:]
        pooled = []
        for index, (features, pool) in enumerate(zip(feature_maps, self.layer_pools, strict=True)):
            layer = pool(neighbourhoods(features, self.patch_size))
            pooled.append(_onto_grid(layer, grid, geometry, index))
        return self.merge_pool(torch.cat(pooled, dim=1))

    def _fused_forward(
        self, feature_maps: Sequence[torch.Tensor], row_groups: list[int], geometry: torch.Tensor | None
    ) -> torch.Tensor:
        grid = feature_maps[0].shape[-2:]
        pooled = []
        for index, (features, rows) in enumerate(zip(feature_maps, row_groups, strict=True)):
            layer = row_neighbourhoods(features, self.patch_size)
            if rows > 1:  # mean over groups of `rows` consecutive channels (a reduction over whole planes)
                layer = layer.unflatten(1, (-1, rows)).mean(dim=2)
            # Resample only the layer's share of the output channels (a 1/L fraction of 1536), never 9·C.
            pooled.append(_onto_grid(layer, grid, geometry, index))
        return torch.cat(pooled, dim=1)


def _onto_grid(layer: torch.Tensor, grid: torch.Size, geometry: torch.Tensor | None, index: int) -> torch.Tensor:
    """Layer ``index``'s map ``(N, C, h, w)`` on the first layer's grid ``(H₀, W₀)``."""
    if geometry is not None:
        return layer if index == 0 else resample(layer, grid, geometry[index], geometry[0])
    if layer.shape[-2:] == grid:
        return layer
    return F.interpolate(layer, size=grid, mode="bilinear", align_corners=False)
