"""DistillClassifier in pure PyTorch: a small ResNet-18 student scored by Mahalanobis distances.

The student (trained by the Lightning module, from scratch on a classification task or by distillation
from a frozen teacher) maps an image to conv2_x/conv3_x feature maps and a pooled embedding. After
training, one Gaussian per category is fitted on normal training images: for the pooled embedding (image
score) and for every location of the conv2_x/conv3_x maps (anomaly map). Only the student and these
Gaussians are part of this module, so inference and export never touch the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_simplenet.components.grid_geometry import measure_geometry, naive_geometry, register_geometry
from anomalib_simplenet.components.mahalanobis import MahalanobisDistance
from anomalib_simplenet.components.pre_processing import as_size

from .anomaly_map import AnomalyMapGenerator
from .networks import EMBEDDING_DIM, STAGE_CHANNELS, STAGES, Student, StudentFeatures, StudentOutput, stage_grid

IMAGE_SCORES = ("embedding", "map_max")
STAGE_STRIDES = {"conv2_x": 4, "conv3_x": 8}


def check_image_score(image_score: str) -> str:
    """Validate the image-score kind."""
    if image_score not in IMAGE_SCORES:
        msg = f"image_score must be one of {IMAGE_SCORES}, got {image_score!r}"
        raise ValueError(msg)
    return image_score


def check_map_layers(map_layers: Sequence[str]) -> list[str]:
    """Validate the stages used for the anomaly map."""
    layers = list(map_layers)
    if not layers or any(layer not in STAGES for layer in layers) or len(set(layers)) != len(layers):
        msg = f"map_layers must be a non-empty subset of {list(STAGES)} without repeats, got {layers}"
        raise ValueError(msg)
    return layers


class CategoryGaussians(nn.Module):
    """Gaussians of one category: one on the pooled embedding, one per location of each map stage.

    Args:
        grids: feature-map size ``(h, w)`` of each stage used for the anomaly map.
    """

    def __init__(self, grids: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.image = MahalanobisDistance(EMBEDDING_DIM)
        self.locations = nn.ModuleDict({
            stage: MahalanobisDistance(STAGE_CHANNELS[stage], groups=h * w) for stage, (h, w) in grids.items()
        })

    @torch.no_grad()
    def fit(self, features: StudentFeatures) -> None:
        """Fit on normal images' features (any device; moved to this module's)."""
        device = self.image.mean.device
        self.image.fit(features.embedding.to(device))
        for stage, gaussian in self.locations.items():
            maps = getattr(features, stage).to(device)
            gaussian.fit(maps.flatten(2).transpose(1, 2))  # (N, h·w, C): one Gaussian per location

    def forward(self, features: StudentFeatures) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image distances ``(N,)`` and per-stage distance maps ``[(N, 1, h, w)]``."""
        image_distance = self.image(features.embedding)
        maps = []
        for stage, gaussian in self.locations.items():
            feature_map = getattr(features, stage)
            batch, _, height, width = feature_map.shape
            distance = gaussian(feature_map.flatten(2).transpose(1, 2))
            maps.append(distance.reshape(batch, 1, height, width))
        return image_distance, maps


class DistillClassifierModel(nn.Module):
    """Student network plus per-category Gaussians.

    Args:
        image_size: model input size ``(H, W)``; it fixes the number of per-location Gaussians.
        num_classes: outputs of the student's classification head.
        categories: names of the categories; one set of Gaussians each.
        map_layers: stages whose per-location distances make the anomaly map.
        anomaly_map_sigma: σ (pixels) of the anomaly map's Gaussian smoothing.
        image_score: ``"embedding"``: Mahalanobis distance of the pooled embedding; ``"map_max"``: maximum of
            the anomaly map (more sensitive to small local defects, which barely move a pooled embedding).
        grid_alignment: resample the stages' distance maps at their cells' true input positions, measured from
            the student the first time the Gaussians are fitted (kept in the ``grid_geometry`` buffer, see
            :mod:`~anomalib_simplenet.components.grid_geometry`); ``False``: ``F.interpolate(align_corners=False)``.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 256,
        num_classes: int = 8,
        categories: Sequence[str] = ("default",),
        map_layers: Sequence[str] = STAGES,
        anomaly_map_sigma: float = 4.0,
        image_score: str = "embedding",
        grid_alignment: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = as_size(image_size)
        self.image_score = check_image_score(image_score)
        self.map_layers = check_map_layers(map_layers)
        self.grids = {stage: stage_grid(self.image_size, stage) for stage in self.map_layers}
        self.student = Student(num_classes)
        self.categories: list[str] = []
        self.gaussians = nn.ModuleList()
        self.set_categories(categories, num_classes)
        map_dims = [STAGE_CHANNELS[stage] for stage in self.map_layers]
        self.anomaly_map_generator = AnomalyMapGenerator(map_dims, anomaly_map_sigma)
        self.grid_alignment = grid_alignment
        # Until the first fit: the positions of an untrained ResNet (zero padding: cell i at pixel s·i).
        register_geometry(self, naive_geometry([STAGE_STRIDES[stage] for stage in self.map_layers]))
        # All offsets exactly 0 mark "not measured yet" (a measurement is never exactly 0 on every layer and axis).
        self.grid_geometry[:, 0] = 0.0
        # Image score below which this percentile of held-out normal training images falls (NaN until fitted).
        self.register_buffer("percentile_threshold", torch.tensor(float("nan")))

    def set_categories(self, categories: Sequence[str], num_classes: int) -> None:
        """Name the categories; rebuild the head and the Gaussians if their sizes change."""
        categories = [str(c) for c in categories]
        if not categories or len(set(categories)) != len(categories):
            msg = f"categories must be non-empty and unique, got {categories}"
            raise ValueError(msg)
        if self.student.fc.out_features != num_classes:
            self.student.reset_head(num_classes)
        if len(categories) != len(self.gaussians):
            # Gaussians are refitted after every training epoch, so same-sized sets are only renamed.
            device = self.student.fc.weight.device
            self.gaussians = nn.ModuleList(CategoryGaussians(self.grids) for _ in categories).to(device)
        self.categories = categories

    @property
    def is_fitted(self) -> bool:
        """True once every category's Gaussians were fitted."""
        return all(bool(g.image.fitted) for g in self.gaussians)

    def check_grid(self, features: StudentFeatures) -> None:
        """Raise if the feature maps do not have the grid the per-location Gaussians were built for."""
        for stage, grid in self.grids.items():
            actual = tuple(getattr(features, stage).shape[-2:])
            if actual != grid:
                msg = (
                    f"{stage} map is {actual[0]}×{actual[1]} but the model was built for image_size="
                    f"{self.image_size} ({stage} {grid[0]}×{grid[1]}): resize inputs to image_size"
                )
                raise ValueError(msg)

    @torch.no_grad()
    def fit(
        self,
        features: StudentFeatures,
        category_index: torch.Tensor,
        fit_mask: torch.Tensor,
        percentile: float,
    ) -> None:
        """Fit the Gaussians on normal training features and set ``percentile_threshold``.

        Args:
            features: student features of all normal training images (``N`` images).
            category_index: category of each image ``(N,)``.
            fit_mask: ``(N,)`` True for images that fit the Gaussians; the others (held out) only set the
                threshold, the ``percentile``-th percentile (0–100) of their image scores.
        """
        self.check_grid(features)
        # Measured on the student at its first fit and kept for the refits after later epochs (the probe costs
        # about a pass over a small training set); a checkpoint carries it, so a resumed fit keeps it too.
        if self.grid_alignment and not self.grid_geometry[:, 0].any():
            self.grid_geometry.copy_(self.measure_grid_geometry())
        for index, (name, gaussians) in enumerate(zip(self.categories, self.gaussians, strict=True)):
            selected = (category_index == index) & fit_mask
            if int(selected.sum()) < 2:
                msg = f"category {name!r} has {int(selected.sum())} normal training images to fit on; need >= 2"
                raise ValueError(msg)
            gaussians.fit(StudentFeatures(*(f[selected] for f in features)))
        held_out = ~fit_mask
        threshold = float("nan")
        if held_out.any():
            device = self.percentile_threshold.device
            scores, _ = self.score(StudentFeatures(*(f[held_out].to(device) for f in features)), self.image_size)
            threshold = torch.quantile(scores.double(), percentile / 100).item()
        self.percentile_threshold.fill_(threshold)

    def measure_grid_geometry(self) -> torch.Tensor:
        """``(L, 2, 2)`` cell positions of the map stages, measured on the student as it is now (eval mode)."""
        was_training = self.student.training
        self.student.eval()
        try:
            device = self.student.fc.weight.device

            def stage_maps(images: torch.Tensor) -> list[torch.Tensor]:
                features = self.student.features(images)
                return [getattr(features, stage) for stage in self.map_layers]

            strides = [STAGE_STRIDES[stage] for stage in self.map_layers]
            return measure_geometry(stage_maps, strides, device=device).to(self.grid_geometry)
        finally:
            self.student.train(was_training)

    def image_scores(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(N,)`` (distance to the nearest category's Gaussian) and that category ``(N,)``."""
        distances = torch.stack([g.image(embeddings) for g in self.gaussians], dim=1)
        return distances.min(dim=1)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled conv3_x embedding ``(N, 128)`` of pre-processed images ``(N, 3, H, W)``.

        Always computed with BatchNorm in eval mode (running statistics), as in scoring, so embeddings do
        not depend on the batch even when called from a training-time hook; the module's mode is restored.
        """
        was_training = self.student.training
        self.student.eval()
        try:
            return self.student.features(images).embedding
        finally:
            self.student.train(was_training)

    def forward(self, images: torch.Tensor) -> StudentOutput | InferenceBatch:
        """Train mode: :class:`StudentOutput`; eval mode: ``InferenceBatch``.

        In eval mode ``pred_score`` ``(N,)`` is the Mahalanobis distance of the pooled embedding to the
        nearest category's Gaussian (or the anomaly map's maximum, ``image_score="map_max"``), and
        ``anomaly_map`` ``(N, 1, H, W)`` that category's per-location distances (see
        :class:`AnomalyMapGenerator`).
        """
        if self.training:
            return self.student(images)
        features = self.student.features(images)
        self.check_grid(features)
        pred_score, anomaly_map = self.score(features, images.shape[-2:])
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def score(
        self,
        features: StudentFeatures,
        image_size: tuple[int, int] | torch.Size,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(N,)`` and anomaly maps ``(N, 1, H, W)`` at ``image_size`` from student features."""
        outputs = [g(features) for g in self.gaussians]
        if len(outputs) == 1:
            pred_score, distance_maps = outputs[0]
        else:
            # Score against the nearest category, no category label needed (works on exported models too).
            pred_score, nearest = torch.stack([o[0] for o in outputs], dim=1).min(dim=1)
            batch_index = torch.arange(len(nearest), device=nearest.device)
            distance_maps = [
                torch.stack([o[1][stage] for o in outputs], dim=1)[batch_index, nearest]
                for stage in range(len(self.map_layers))
            ]
        geometry = self.grid_geometry if self.grid_alignment else None
        anomaly_map = self.anomaly_map_generator(distance_maps, image_size, geometry)
        if self.image_score == "map_max":
            pred_score = anomaly_map.flatten(1).amax(dim=1)
        return pred_score, anomaly_map
