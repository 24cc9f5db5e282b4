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
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_simplenet.components.backbone import create_feature_extractor, default_layers, freeze
from anomalib_simplenet.components.grid_geometry import (
    measure_module_geometry,
    naive_geometry,
    register_geometry,
    tracing,
)

from .anomaly_map import AnomalyMapGenerator
from .feature_noise import DEFAULT_RELATIVE_NOISE_STD, AnomalyFeatureGenerator
from .feature_scale import batch_scale
from .location_gaussian import LocationGaussianEnsemble
from .patch_features import PatchAggregator

MAX_EMBED_DIM = 1536  # the official wide_resnet50_2 width
MAX_DISCRIMINATOR_HIDDEN = 1024  # the official width, for 1536-long features
# Each location's Gaussian holds a D×D matrix: at 256 px (32×32 locations) D = 152 (EfficientNet-Lite0) takes 95 MB,
# D = 1056 (Inception-v3) 3.8 GB and D = 1536 (wide_resnet50_2, 36×36 at 288 px) 12 GB, in the model and its export.
# Wider features keep Gaussians on a random subset of 152 channels, as Padim does (validated on Inception-v3).
MAX_LOCATION_GAUSSIAN_DIM = 256
GAUSSIAN_SUBSET_CHANNELS = 152


def default_embed_dim(channels: Sequence[int]) -> int:
    """``min(1536, Σ channels)``: the official width for wide ResNets, no channel replication for small nets."""
    return min(MAX_EMBED_DIM, sum(channels))


def default_discriminator_hidden(embed_dim: int) -> int:
    """``min(1024, D)``: the official 1024 for 1536-long features, never wider than the features themselves.

    The discriminator is the whole cost of a cached epoch; 1024 hidden units on 152-long lite0 features cost ~7×
    the arithmetic of 152 for no measurable gain (benchmarks/simplenet_sweep.py).
    """
    return min(MAX_DISCRIMINATOR_HIDDEN, embed_dim)


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
        if hidden < 1:
            msg = f"discriminator_hidden must be >= 1, got {hidden}"
            raise ValueError(msg)
        layers: list[nn.Module] = []
        width = channels
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(width, hidden, kernel_size=1), nn.BatchNorm2d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Conv2d(width, 1, kernel_size=1, bias=False))
        super().__init__(*layers)
        self.apply(_xavier_init)


class SimpleNetModel(nn.Module):
    """SimpleNet network.

    Args:
        backbone: timm model name.
        layers: backbone layers whose features are aggregated (the first sets the output grid); ``None``: the
            backbone's last stride-8 and stride-16 stages (``layer2, layer3`` for ResNets).
        pre_trained: use ImageNet weights for the backbone.
        backbone_weights: local state-dict file for the backbone (overrides ``pre_trained``).
        patch_size: neighbourhood size for local aggregation.
        pretrain_embed_dim: per-layer feature length after aggregation; ``None``: ``min(1536, Σ channels)``.
        target_embed_dim: final feature length ``D``; ``None``: ``min(1536, Σ channels)`` (1536 for
            ``wide_resnet50_2``'s 512 + 1024 channels, 152 for ``efficientnet_lite0``'s 40 + 112: a small
            backbone's channels are never replicated by pooling up).
        adapter_layers: number of adapter layers.
        discriminator_layers: number of discriminator layers (including the output layer).
        discriminator_hidden: hidden width of the discriminator; ``None``: ``min(1024, D)`` (1024 for
            ``wide_resnet50_2``, 152 for ``efficientnet_lite0``).
        noise_std: absolute σ of the Gaussian feature noise (the official code: 0.015); ``None``: relative.
        relative_noise_std: σ as a fraction of the training features' scale when ``noise_std`` is ``None``.
        anomaly_map_sigma: σ of the Gaussian smoothing of the upsampled score map.
        location_gaussian: add a per-location Gaussian's distance to the discriminator's score (see
            :mod:`.location_gaussian`; fitted by SimpleNet's fit); ``False``: the discriminator alone (official);
            ``None``: on, with all channels when the feature length ``D`` is at most
            :data:`MAX_LOCATION_GAUSSIAN_DIM`, else on a seeded random subset of :data:`GAUSSIAN_SUBSET_CHANNELS`;
            ``True``: on with all channels.
        channels_last: keep the backbone weights in channels-last memory format (faster convolutions on
            CPU (oneDNN) and on GPU tensor cores; the numbers are the same).
        grid_alignment: resample the deeper layers onto the first layer's grid and the score map onto the
            image at the cells' true input positions, measured once from the backbone's effective receptive
            fields (:mod:`~anomalib_simplenet.components.grid_geometry`, kept in the ``grid_geometry``
            buffer). ``False``: ``F.interpolate(align_corners=False)`` as the official code, whose maps sit
            down-right of the defects (about 14 px for ImageNet EfficientNet-Lite0 at stride 8/16).

    The adapter's last layer and the discriminator's first layer are both linear per location, so the head
    multiplies them once per step (``W₁·Wₐ``, a ``hidden × D`` matrix) and runs one ``D → hidden`` product per
    location instead of two; the noised branch adds ``W₁·noise``. Same function and parameters, about half the
    head's arithmetic in training and a third in inference.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        patch_size: int = 3,
        pretrain_embed_dim: int | None = None,
        target_embed_dim: int | None = None,
        adapter_layers: int = 1,
        discriminator_layers: int = 2,
        discriminator_hidden: int | None = None,
        noise_std: float | None = None,
        relative_noise_std: float = DEFAULT_RELATIVE_NOISE_STD,
        anomaly_map_sigma: float = 4.0,
        channels_last: bool = True,
        location_gaussian: bool | None = False,
        grid_alignment: bool = True,
    ) -> None:
        super().__init__()
        layers = list(layers) if layers is not None else default_layers(backbone)
        self.feature_extractor = freeze(create_feature_extractor(backbone, layers, pre_trained, backbone_weights))
        if channels_last:
            self.feature_extractor.to(memory_format=torch.channels_last)
        channels = self.feature_extractor.feature_info.channels()
        strides = self.feature_extractor.feature_info.reduction()
        self.grid_alignment = grid_alignment
        geometry = measure_module_geometry(self.feature_extractor, strides) if grid_alignment else None
        register_geometry(self, naive_geometry(strides) if geometry is None else geometry)
        pretrain_embed_dim = default_embed_dim(channels) if pretrain_embed_dim is None else pretrain_embed_dim
        target_embed_dim = default_embed_dim(channels) if target_embed_dim is None else target_embed_dim
        self.aggregator = PatchAggregator(channels, patch_size, pretrain_embed_dim, target_embed_dim)
        self.adapter = FeatureAdapter(target_embed_dim, adapter_layers)
        if discriminator_hidden is None:
            discriminator_hidden = default_discriminator_hidden(target_embed_dim)
        self.discriminator = Discriminator(target_embed_dim, discriminator_hidden, discriminator_layers)
        self.noise_generator = AnomalyFeatureGenerator(noise_std, relative_noise_std)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=anomaly_map_sigma)
        self.location_gaussian = None
        if location_gaussian is None:
            wide = target_embed_dim > MAX_LOCATION_GAUSSIAN_DIM
            self.location_gaussian = LocationGaussianEnsemble(
                target_embed_dim, channels=GAUSSIAN_SUBSET_CHANNELS if wide else None
            )
        elif location_gaussian:
            self.location_gaussian = LocationGaussianEnsemble(target_embed_dim)
        self._fused_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] | None = None

    def train(self, mode: bool = True) -> SimpleNetModel:
        """Switch mode, keeping the frozen backbone in eval mode (its BatchNorm statistics must not move)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen part of the network: images ``(N, 3, H, W)`` → patch features ``(N, D, h, w)``."""
        return self.aggregator(self.feature_extractor(images), self.grid_geometry if self.grid_alignment else None)

    def _fused_linear(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Adapter's last layer followed by the discriminator's first as one 1×1 convolution.

        Returns:
            Fused weight ``(hidden, D, 1, 1)``, fused bias ``(hidden,)`` or ``None``, and the discriminator's first
            weight ``(hidden, D, 1, 1)`` (for the noise branch).

        Without gradients the product is kept until a parameter changes (in place or by moving device): at
        batch 1 it would cost as much as the head itself. Traced exports always get the plain product.
        """
        adapter_out, discriminator_in = self.adapter[-1], self.discriminator[0]
        parameters = (adapter_out.weight, adapter_out.bias, discriminator_in.weight, discriminator_in.bias)
        reuse = not torch.is_grad_enabled() and not tracing()
        key = tuple((p.data_ptr(), p._version) for p in parameters if p is not None) if reuse else None
        if key is not None and self._fused_cache is not None and self._fused_cache[0] == key:
            return self._fused_cache[1]
        first = discriminator_in.weight.flatten(1)  # (hidden, D)
        weight = (first @ adapter_out.weight.flatten(1))[:, :, None, None]
        bias = first @ adapter_out.bias
        if discriminator_in.bias is not None:
            bias = bias + discriminator_in.bias
        fused = (weight, bias, discriminator_in.weight)
        self._fused_cache = (key, fused) if key is not None else None
        return fused

    def _pre_adapter(self, features: torch.Tensor) -> torch.Tensor:
        """All adapter layers but the last (identity for the default one-layer adapter)."""
        for layer in list(self.adapter)[:-1]:
            features = layer(features)
        return features

    def _post_discriminator(self, hidden: torch.Tensor) -> torch.Tensor:
        """All discriminator layers after the first: ``(N, hidden, h, w)`` → ``(N, 1, h, w)``."""
        for layer in list(self.discriminator)[1:]:
            hidden = layer(hidden)
        return hidden

    def discriminate(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass on patch features ``(N, D, h, w)``: adapted features and adapted + noise.

        Args:
            features: patch features from :meth:`extract_features` (or a cache of them).
            generator: noise source; ``None`` draws from the global RNG (a fresh draw every call).

        Returns:
            Discriminator outputs ``(N, 1, h, w)`` for the adapted features and for their noised copies.
        """
        noise_source = self.noise_generator
        if noise_source.relative and not noise_source.measured:
            # Used outside SimpleNet's fit (which measures the whole training set first): this batch's scale,
            # on this process alone (no collective that other ranks might never reach).
            noise_source.set_feature_scale(batch_scale(features))
        hidden_in = self._pre_adapter(features)
        weight, bias, first = self._fused_linear()
        # Noise in adapted-feature space (N, D, h, w), the same draw as ``adapted + noise`` would take.
        noise = self.noise_generator.noise(hidden_in, generator)
        hidden = F.conv2d(hidden_in, weight, bias)
        noised_hidden = hidden + F.conv2d(noise, first)
        scores = self._post_discriminator(torch.cat([hidden, noised_hidden]))
        if self.location_gaussian is not None and self.training:
            self.location_gaussian.track(-scores[: len(features)].detach())
        return scores[: len(features)], scores[len(features) :]

    def score_map(self, features: torch.Tensor) -> torch.Tensor:
        """Per-location anomaly scores ``(N, 1, h, w)`` (higher = more anomalous) for patch features."""
        weight, bias, _ = self._fused_linear()
        scores = -self._post_discriminator(F.conv2d(self._pre_adapter(features), weight, bias))
        return scores if self.location_gaussian is None else self.location_gaussian(features, scores)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled adapted features ``(N, D)``: one vector per image for clustering and analysis."""
        return self.adapter(self.extract_features(images)).mean(dim=(2, 3))

    def predict(self, features: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> InferenceBatch:
        """Eval output for patch features ``(N, D, h, w)``: image scores ``(N,)`` and maps ``(N, 1, H, W)``.

        ``pred_score`` is the maximum of the per-location scores (as the official code); ``anomaly_map`` is
        the one-channel score map upsampled to ``image_size`` (on the true grid, see ``grid_alignment``) and
        smoothed (no feature map is upsampled).
        """
        scores = self.score_map(features)
        pred_score = scores.flatten(1).amax(dim=1)
        geometry = self.grid_geometry[0] if self.grid_alignment else None
        anomaly_map = self.anomaly_map_generator(scores, image_size, geometry)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Train mode: ``discriminate`` on the images' features; eval mode: :meth:`predict`."""
        features = self.extract_features(images)
        if self.training:
            return self.discriminate(features)
        return self.predict(features, images.shape[-2:])
