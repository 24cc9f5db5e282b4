"""UNetAE in pure PyTorch: a U-Net-shaped convolutional auto-encoder trained from scratch on normal images.

Encoder levels ``0 … depth`` (level ``i`` at ``1/2^i`` of the input size, ``base_channels · 2^i`` channels,
capped at ``8 · base_channels``) → 1×1 bottleneck with ``latent_dim`` channels → mirrored decoder → sigmoid
reconstruction in ``[0, 1]``. Anomalies are pixels the network cannot reconstruct.

Identity shortcut control. A U-Net with skips at every level can copy its input through the shallow skips
and then reconstructs defects too, so their error vanishes. Here only the ``skip_levels`` deepest encoder
levels feed the decoder (default 1: coarse layout only, fine detail must come through the bottleneck), skipped
features can be dropped channel-wise in training (``skip_dropout``), and training inputs can have random
square patches masked out (``mask_ratio``) while the loss targets the clean image, which teaches the network
to paint normal content instead of copying pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_simplenet.components.mahalanobis import MahalanobisDistance

from .anomaly_map import SCORE_MODES, AnomalyMapGenerator, image_score
from .ssim import SSIMMap


class ConvBlock(nn.Sequential):
    """Two [3×3 conv, BatchNorm, LeakyReLU(0.2)]; the first conv may stride 2 (learned downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
        )


class UpBlock(nn.Module):
    """Bilinear ×2 upsampling (no checkerboard artefacts), optional skip concatenation, then a ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, skip_dropout: float) -> None:
        super().__init__()
        self.skip_dropout = nn.Dropout2d(skip_dropout) if skip_channels and skip_dropout > 0 else nn.Identity()
        self.block = ConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, features: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """``(N, C_in, h, w)`` (+ skip ``(N, C_skip, 2h, 2w)``) → ``(N, C_out, 2h, 2w)``."""
        features = F.interpolate(features, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            features = torch.cat([features, self.skip_dropout(skip)], dim=1)
        return self.block(features)


def _check(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"{name} must be {bound}, got {value}"
        raise ValueError(msg)


class UNetAEModel(nn.Module):
    """UNetAE network.

    Args:
        in_channels: image channels.
        depth: number of ×2 downsamplings; inputs are padded to a multiple of ``2^depth``.
        base_channels: channels of the full-resolution level.
        latent_dim: channels of the bottleneck map, i.e. length of the image embedding.
        skip_levels: how many of the deepest encoder levels (``0 … depth``) feed the decoder; ``depth`` = full
            U-Net, 0 = plain auto-encoder.
        skip_dropout: channel dropout probability on the skipped features in training.
        mask_ratio: fraction of ``mask_patch_size`` squares replaced by the image mean in training inputs.
        mask_patch_size: side (pixels) of the masked squares.
        map_l2_weight, map_ssim_weight: weights of the RMS and SSIM errors in the anomaly map.
        anomaly_map_sigma: σ (pixels) of the Gaussian smoothing of the anomaly map.
        score_mode: ``"max"`` or ``"topk_mean"`` of the anomaly map as image score.
        top_k: pixels averaged by ``"topk_mean"``.
        use_embedding_score: add the Mahalanobis distance of the image embedding to the normal ones to the score.
        embedding_weight: weight of the standardised distance against the standardised map score.
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 4,
        base_channels: int = 16,
        latent_dim: int = 128,
        skip_levels: int = 1,
        skip_dropout: float = 0.0,
        mask_ratio: float = 0.0,
        mask_patch_size: int = 8,
        map_l2_weight: float = 0.5,
        map_ssim_weight: float = 0.5,
        anomaly_map_sigma: float = 4.0,
        score_mode: str = "max",
        top_k: int = 100,
        use_embedding_score: bool = False,
        embedding_weight: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("depth", depth), ("base_channels", base_channels),
                            ("latent_dim", latent_dim), ("mask_patch_size", mask_patch_size), ("top_k", top_k)):
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        if not isinstance(skip_levels, int) or not 0 <= skip_levels <= depth:
            msg = f"skip_levels must be an int in [0, depth={depth}], got {skip_levels!r}"
            raise ValueError(msg)
        _check("skip_dropout", skip_dropout, 0.0, 0.99)
        _check("mask_ratio", mask_ratio, 0.0, 0.9)
        _check("embedding_weight", embedding_weight, 0.0)
        if score_mode not in SCORE_MODES:
            msg = f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}"
            raise ValueError(msg)
        self.depth = depth
        self.skip_levels = skip_levels
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self.score_mode = score_mode
        self.top_k = top_k
        self.embedding_weight = embedding_weight

        widths = [base_channels * 2 ** min(level, 3) for level in range(depth + 1)]
        self.skipped = [level >= depth - skip_levels for level in range(depth)]  # per encoder level 0 … depth-1
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])]
            + [ConvBlock(widths[level - 1], widths[level], stride=2) for level in range(1, depth + 1)],
        )
        self.to_latent = nn.Conv2d(widths[depth], latent_dim, kernel_size=1)
        self.from_latent = nn.Sequential(
            nn.Conv2d(latent_dim, widths[depth], 1, bias=False), nn.BatchNorm2d(widths[depth]), nn.LeakyReLU(0.2),
        )
        self.decoder = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level] if self.skipped[level] else 0, widths[level], skip_dropout)
            for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], in_channels, kernel_size=1)

        ssim = SSIMMap(channels=in_channels)
        self.anomaly_map_generator = AnomalyMapGenerator(ssim, map_l2_weight, map_ssim_weight, anomaly_map_sigma)
        self.mahalanobis = MahalanobisDistance(latent_dim) if use_embedding_score else None
        # (mean, std) of map scores and of embedding distances on normal training images, to standardise both.
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    @property
    def use_embedding_score(self) -> bool:
        """Whether the image score includes the embedding's Mahalanobis distance."""
        return self.mahalanobis is not None

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Replicate-pad ``(N, C, H, W)`` at the bottom/right to multiples of ``2^depth``."""
        multiple = 2**self.depth
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images ``(N, C, H, W)`` → bottleneck map ``(N, latent_dim, H/2^depth, W/2^depth)`` and skip features.

        ``H`` and ``W`` are rounded up to multiples of ``2^depth`` (padding).
        """
        features = self._pad(images)
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            features = block(features)
            skips.append(features)
        return self.to_latent(features), skips[:-1]

    def decode(self, latent: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck map and encoder features → reconstruction ``(N, C, H', W')`` in ``[0, 1]`` (padded size)."""
        features = self.from_latent(latent)
        for block, level in zip(self.decoder, reversed(range(self.depth)), strict=True):
            features = block(features, skips[level] if self.skipped[level] else None)
        return torch.sigmoid(self.head(features))

    def reconstruct_and_embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: reconstruction ``(N, C, H, W)`` in ``[0, 1]`` and embedding ``(N, latent_dim)`` (no masking)."""
        latent, skips = self.encode(images)
        reconstruction = self.decode(latent, skips)[..., : images.shape[-2], : images.shape[-1]]
        return reconstruction, latent.mean(dim=(2, 3))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, C, H, W)`` of images ``(N, C, H, W)`` in ``[0, 1]`` (no masking, in any mode)."""
        return self.reconstruct_and_embed(images)[0]

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Spatial mean of the bottleneck map: ``(N, latent_dim)``, one vector per image."""
        return self.encode(images)[0].mean(dim=(2, 3))

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """Replace a random ``mask_ratio`` of ``mask_patch_size`` squares by each image's mean colour."""
        if self.mask_ratio == 0:
            return images
        size = self.mask_patch_size
        height, width = images.shape[-2:]
        grid = torch.rand(len(images), 1, -(-height // size), -(-width // size), device=images.device)
        hidden = (grid < self.mask_ratio).repeat_interleave(size, 2).repeat_interleave(size, 3)[..., :height, :width]
        return torch.where(hidden, images.mean(dim=(2, 3), keepdim=True), images)

    def score(
        self, images: torch.Tensor, reconstruction: torch.Tensor, embedding: torch.Tensor | None = None,
    ) -> InferenceBatch:
        """``pred_score`` ``(N,)`` and ``anomaly_map`` ``(N, 1, H, W)`` from images and their reconstructions.

        With ``use_embedding_score`` the score is ``z(map score) + embedding_weight · z(Mahalanobis distance)``,
        each standardised with its mean and std on the normal training images: the two live on unrelated scales
        (an error of ~0.1 vs a distance of ~√latent_dim), and z-scores make ``embedding_weight`` meaningful.
        ``embedding`` ``(N, latent_dim)`` may be passed when already computed (saves an encoder pass).
        """
        anomaly_map = self.anomaly_map_generator(images, reconstruction)
        pred_score = image_score(anomaly_map, self.score_mode, self.top_k)
        if self.mahalanobis is not None:
            distance = self.mahalanobis(self.image_embedding(images) if embedding is None else embedding)
            map_mean, map_std, dist_mean, dist_std = self.score_stats
            pred_score = (pred_score - map_mean) / map_std + self.embedding_weight * (distance - dist_mean) / dist_std
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    @torch.no_grad()
    def fit_embedding_distribution(self, embeddings: torch.Tensor, map_scores: torch.Tensor) -> None:
        """Fit the Gaussian on normal embeddings ``(N, latent_dim)``; store the score statistics (maps ``(N,)``)."""
        if self.mahalanobis is None:
            msg = "fit_embedding_distribution needs use_embedding_score=True"
            raise RuntimeError(msg)
        self.mahalanobis.fit(embeddings)
        distances = self.mahalanobis(embeddings.to(self.score_stats.device))
        eps = torch.finfo(self.score_stats.dtype).eps
        stats = [map_scores.mean(), map_scores.std().clamp_min(eps), distances.mean(), distances.std().clamp_min(eps)]
        self.score_stats.copy_(torch.stack(stats).to(self.score_stats))

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Train mode: reconstruction ``(N, C, H, W)`` of the (masked) images; eval mode: ``InferenceBatch``."""
        if self.training:
            return self.reconstruct(self.mask(images))
        return self.score(images, *self.reconstruct_and_embed(images))
