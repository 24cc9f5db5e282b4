"""SimpleNet in pure PyTorch (Liu et al., "SimpleNet: A Simple Network for Image Anomaly Detection and
Localization", CVPR 2023).

Frozen backbone → locally aggregated patch features → feature adapter → discriminator. In training the
discriminator sees adapted features and the same features plus Gaussian noise (the synthetic anomalies);
at inference the negated discriminator output is the anomaly score of each location.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_simplenet.components.backbone import create_feature_extractor, freeze
from anomalib_simplenet.components.patch_features import PatchAggregator

from .anomaly_map import AnomalyMapGenerator


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class FeatureAdapter(nn.Sequential):
    """Per-location linear projection ``(N, D, H, W)`` → ``(N, D, H, W)`` (1×1 convolutions).

    With more than one layer, LeakyReLU(0.2) separates them (stacked linear maps would collapse into one).
    """

    def __init__(self, channels: int, num_layers: int = 1) -> None:
        if num_layers < 1:
            msg = f"adapter_layers must be >= 1, got {num_layers}"
            raise ValueError(msg)
        layers: list[nn.Module] = []
        for index in range(num_layers):
            layers.append(nn.Conv2d(channels, channels, kernel_size=1))
            if index < num_layers - 1:
                layers.append(nn.LeakyReLU(0.2))
        super().__init__(*layers)
        self.apply(_xavier_init)


class Discriminator(nn.Sequential):
    """Per-location MLP ``(N, D, H, W)`` → ``(N, 1, H, W)``: [Linear, BatchNorm, LeakyReLU(0.2)]×(n-1), Linear."""

    def __init__(self, channels: int, hidden: int = 1024, num_layers: int = 2) -> None:
        if num_layers < 1:
            msg = f"discriminator_layers must be >= 1, got {num_layers}"
            raise ValueError(msg)
        layers: list[nn.Module] = []
        width = channels
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(width, hidden, kernel_size=1), nn.BatchNorm2d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Conv2d(width, 1, kernel_size=1, bias=False))
        super().__init__(*layers)
        self.apply(_xavier_init)


class AnomalyFeatureGenerator(nn.Module):
    """Synthetic anomalies in feature space: ``features + N(0, σ²)``, used in training only."""

    def __init__(self, noise_std: float = 0.015) -> None:
        super().__init__()
        if noise_std <= 0:
            msg = f"noise_std must be > 0, got {noise_std}"
            raise ValueError(msg)
        self.noise_std = noise_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``features`` plus i.i.d. Gaussian noise of the same shape."""
        return features + torch.randn_like(features) * self.noise_std


class SimpleNetModel(nn.Module):
    """SimpleNet network.

    Args:
        backbone: timm model name.
        layers: backbone layers whose features are aggregated (the first sets the output grid).
        pre_trained: use ImageNet weights for the backbone.
        backbone_weights: local state-dict file for the backbone (overrides ``pre_trained``).
        patch_size: neighbourhood size for local aggregation.
        pretrain_embed_dim: per-layer feature length after aggregation.
        target_embed_dim: final feature length ``D``.
        adapter_layers: number of adapter layers.
        discriminator_layers: number of discriminator layers (including the output layer).
        discriminator_hidden: hidden width of the discriminator.
        noise_std: σ of the Gaussian feature noise.
        anomaly_map_sigma: σ of the Gaussian smoothing of the upsampled score map.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        patch_size: int = 3,
        pretrain_embed_dim: int = 1536,
        target_embed_dim: int = 1536,
        adapter_layers: int = 1,
        discriminator_layers: int = 2,
        discriminator_hidden: int = 1024,
        noise_std: float = 0.015,
        anomaly_map_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.feature_extractor = freeze(create_feature_extractor(backbone, layers, pre_trained, backbone_weights))
        channels = self.feature_extractor.feature_info.channels()
        self.aggregator = PatchAggregator(channels, patch_size, pretrain_embed_dim, target_embed_dim)
        self.adapter = FeatureAdapter(target_embed_dim, adapter_layers)
        self.discriminator = Discriminator(target_embed_dim, discriminator_hidden, discriminator_layers)
        self.noise_generator = AnomalyFeatureGenerator(noise_std)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=anomaly_map_sigma)

    def train(self, mode: bool = True) -> SimpleNetModel:
        """Switch mode, keeping the frozen backbone in eval mode (its BatchNorm statistics must not move)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen part of the network: images ``(N, 3, H, W)`` → patch features ``(N, D, h, w)``."""
        return self.aggregator(self.feature_extractor(images))

    def discriminate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass on patch features ``(N, D, h, w)``.

        Returns:
            Discriminator outputs ``(N, 1, h, w)`` for the adapted features and for their noised copies.
        """
        adapted = self.adapter(features)
        noised = self.noise_generator(adapted)
        scores = self.discriminator(torch.cat([adapted, noised]))
        return scores[: len(features)], scores[len(features) :]

    def score_map(self, features: torch.Tensor) -> torch.Tensor:
        """Per-location anomaly scores ``(N, 1, h, w)`` (higher = more anomalous) for patch features."""
        return -self.discriminator(self.adapter(features))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled adapted features ``(N, D)``: one vector per image for clustering and analysis."""
        return self.adapter(self.extract_features(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Train mode: ``discriminate`` on the images' features; eval mode: ``InferenceBatch``.

        In eval mode ``pred_score`` ``(N,)`` is the maximum of the per-location scores (as the official
        code), and ``anomaly_map`` ``(N, 1, H, W)`` the score map upsampled to the input size and smoothed.
        """
        features = self.extract_features(images)
        if self.training:
            return self.discriminate(features)
        scores = self.score_map(features)
        pred_score = scores.flatten(1).amax(dim=1)
        anomaly_map = self.anomaly_map_generator(scores, images.shape[-2:])
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
