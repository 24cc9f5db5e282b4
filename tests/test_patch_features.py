"""Local aggregation equals the official order of operations (unfold → resize → pool)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_simplenet.models.simplenet.patch_features import ChannelPool, PatchAggregator, adaptive_pool_matrix


@pytest.mark.parametrize(("channels_in", "channels_out"), [(12, 4), (10, 4), (6, 9), (8, 8)])
def test_channel_pool_matches_adaptive_avg_pool1d(channels_in: int, channels_out: int) -> None:
    features = torch.randn(2, channels_in, 3, 5)
    expected = F.adaptive_avg_pool1d(features.permute(0, 2, 3, 1).reshape(-1, 1, channels_in), channels_out)
    expected = expected.reshape(2, 3, 5, channels_out).permute(0, 3, 1, 2)
    torch.testing.assert_close(ChannelPool(channels_in, channels_out)(features), expected)


def test_pool_matrix_rows_average() -> None:
    matrix = adaptive_pool_matrix(10, 4)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(4))


def _official_order(maps: list[torch.Tensor], patch: int, pre_dim: int, target_dim: int) -> torch.Tensor:
    """Reference: each location's unfolded neighbourhood, deeper layers resized first, then pooled per location."""
    grid = maps[0].shape[-2:]
    per_layer = []
    for features in maps:
        batch, _, height, width = features.shape
        unfolded = F.unfold(features, patch, padding=patch // 2).reshape(batch, -1, height, width)
        if (height, width) != tuple(grid):
            unfolded = F.interpolate(unfolded, size=grid, mode="bilinear", align_corners=False)
        vectors = unfolded.permute(0, 2, 3, 1).reshape(-1, 1, unfolded.shape[1])
        per_layer.append(F.adaptive_avg_pool1d(vectors, pre_dim))  # (N·H·W, 1, pre_dim)
    stacked = torch.cat(per_layer, dim=1).reshape(len(per_layer[0]), 1, -1)
    pooled = F.adaptive_avg_pool1d(stacked, target_dim).reshape(maps[0].shape[0], *grid, target_dim)
    return pooled.permute(0, 3, 1, 2)


@pytest.mark.parametrize(("pre_dim", "target_dim"), [(48, 48), (40, 24)])
def test_aggregator_matches_official_order(pre_dim: int, target_dim: int) -> None:
    torch.manual_seed(0)
    maps = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    aggregated = PatchAggregator([8, 16], patch_size=3, pretrain_embed_dim=pre_dim, target_embed_dim=target_dim)(maps)
    assert aggregated.shape == (2, target_dim, 8, 8)
    torch.testing.assert_close(aggregated, _official_order(maps, 3, pre_dim, target_dim), atol=1e-5, rtol=1e-5)


def test_aggregator_rejects_even_patch() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        PatchAggregator([8], patch_size=2)
