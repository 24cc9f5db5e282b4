"""A "large model" reference: Mahalanobis scoring of a frozen ImageNet network's own features.

PaDiM-like: a Gaussian (Ledoit–Wolf shrinkage, :mod:`anomalib_simplenet.components.mahalanobis`) per location of
each chosen feature level, fitted once on the normal training images; nothing is trained. It answers "how well do
the teacher's features detect anomalies by themselves?", the bar a distilled student is measured against. The
maps are combined as DistillClassifier's (each level's distance divided by ``sqrt(channels)``, averaged on the
finest grid, upsampled and smoothed), so the two differ only in whose features are scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_simplenet.components.backbone import create_network, drop_blocks_after_deepest, freeze, weights_source
from anomalib_simplenet.components.mahalanobis import MahalanobisDistance
from anomalib_simplenet.models.distill_classifier.anomaly_map import AnomalyMapGenerator

IMAGE_SCORES = ("map_max", "embedding")


class TeacherMahalanobisModel(nn.Module):
    """Frozen timm network (``features_only``) plus per-location Gaussians of its ``levels`` feature maps.

    Args:
        backbone: timm name, e.g. ``efficientnet_lite0``.
        levels: indices into the network's ``feature_info`` (0 = stride 2, 1 = stride 4, 2 = stride 8 …), so the
            same setting means the same strides for any backbone.
        image_size: input ``(H, W)``; fixes the number of per-location Gaussians.
        pre_trained: ImageNet weights (hub cache, installed package, then hub); ``False`` for plumbing tests.
        image_score: ``"map_max"`` (maximum of the anomaly map) or ``"embedding"`` (Mahalanobis distance of the
            deepest level, average-pooled).
        anomaly_map_sigma: σ (pixels) of the map smoothing.
    """

    def __init__(
        self,
        backbone: str,
        levels: Sequence[int],
        image_size: tuple[int, int],
        pre_trained: bool = True,
        image_score: str = "map_max",
        anomaly_map_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if image_score not in IMAGE_SCORES:
            msg = f"image_score must be one of {IMAGE_SCORES}, got {image_score!r}"
            raise ValueError(msg)
        levels = sorted(set(int(level) for level in levels))
        # Without the blocks after the deepest level: they would be run (EfficientNet) and counted in the cost.
        network = create_network(backbone, pre_trained, features_only=True, out_indices=levels)
        self.network = freeze(drop_blocks_after_deepest(network))
        self.weights_source = weights_source(self.network)
        self.image_score = image_score
        with torch.no_grad():
            probe = self.network(torch.zeros(1, 3, *image_size))
        channels = [int(f.shape[1]) for f in probe]
        self.locations = nn.ModuleList(
            MahalanobisDistance(c, groups=int(f.shape[-2] * f.shape[-1])) for c, f in zip(channels, probe, strict=True)
        )
        self.embedding = MahalanobisDistance(channels[-1])
        self.anomaly_map_generator = AnomalyMapGenerator(channels, anomaly_map_sigma)

    def train(self, mode: bool = True) -> TeacherMahalanobisModel:
        """The network stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.network.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[(N, C_l, h_l, w_l)]`` of pre-processed images ``(N, 3, H, W)``."""
        with torch.no_grad():
            return list(self.network(images))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled deepest feature map ``(N, C)`` (used by DBSCAN and the embedding score)."""
        return self.features(images)[-1].mean(dim=(2, 3))

    @torch.no_grad()
    def fit(self, features: Sequence[torch.Tensor]) -> None:
        """Fit every Gaussian on the normal training images' feature maps (one tensor per level)."""
        for gaussian, maps in zip(self.locations, features, strict=True):
            gaussian.fit(maps.flatten(2).transpose(1, 2))  # (N, h·w, C): one Gaussian per location
        self.embedding.fit(features[-1].mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """``pred_score`` ``(N,)`` and ``anomaly_map`` ``(N, 1, H, W)``."""
        features = self.features(images)
        distances = []
        for gaussian, maps in zip(self.locations, features, strict=True):
            batch, _, height, width = maps.shape
            distances.append(gaussian(maps.flatten(2).transpose(1, 2)).reshape(batch, 1, height, width))
        anomaly_map = self.anomaly_map_generator(distances, images.shape[-2:])
        if self.image_score == "map_max":
            pred_score = anomaly_map.flatten(1).amax(dim=1)
        else:
            pred_score = self.embedding(features[-1].mean(dim=(2, 3)))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
