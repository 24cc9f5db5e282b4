"""DistillClassifier's training objective: the student's task, feature matching and soft labels, weighted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .arguments import default_weight
from .loss import FeatureDistillationLoss, SoftLabelDistillationLoss
from .networks import Student
from .tasks import apply_transforms, category_labels, fixed_transform_labels, random_transform_labels
from .teacher import Teacher


class DistillationObjective(nn.Module):
    """Weighted loss terms of the student on pre-processed normal images ``(N, 3, H, W)``.

    Terms: ``classification`` (cross-entropy of the student's head on the task labels: the image's category with
    several categories, else the geometric transform applied to it), ``feature`` (STPM feature matching of the
    student's conv2_x/conv3_x maps to the teacher's) and ``soft_label`` (distillation of the teacher probe's
    logits into the student's head). The weights depend on whether the data has several categories, known only
    at ``setup``: :meth:`resolve_weights` sets them then.

    Args:
        mode: ``"scratch"`` (no teacher) or ``"distill"``.
        feature_weight: weight of ``feature`` (distill only).
        classification_weight: weight of ``classification``; ``None`` = 1 (scratch), 0 (distill).
        soft_label_weight: weight of ``soft_label``; ``None`` = 1 with several categories in distill mode, else 0.
        temperature: softmax temperature of the soft-label loss.
        num_transforms: classes of the single-category transform task.
        multi_category: whether the data is known to have several categories (provisional until ``setup``).
    """

    def __init__(
        self,
        mode: str,
        feature_weight: float,
        classification_weight: float | None,
        soft_label_weight: float | None,
        temperature: float,
        num_transforms: int,
        multi_category: bool,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.feature_weight = feature_weight
        self.classification_weight = classification_weight
        self.soft_label_weight = soft_label_weight
        self.num_transforms = num_transforms
        self.feature_loss = FeatureDistillationLoss()
        self.soft_label_loss = SoftLabelDistillationLoss(temperature)
        # Provisional until ``setup`` knows the data's categories (only then is "all weights 0" an error).
        self.weights = self.resolve_weights(multi_category, strict=False)

    def resolve_weights(self, multi_category: bool, strict: bool = True) -> dict[str, float]:
        """The weight of each term for data with one or several categories (also stored in :attr:`weights`).

        Raises:
            ValueError: with ``strict``, when every weight is 0 (nothing would be trained).
        """
        distill = self.mode == "distill"
        weights = {
            "feature": float(self.feature_weight) if distill else 0.0,
            "classification": default_weight(self.classification_weight, 0.0 if distill else 1.0),
            "soft_label": default_weight(self.soft_label_weight, 1.0 if distill and multi_category else 0.0),
        }
        if strict and not any(weights.values()):
            msg = f"all loss weights are 0 in mode {self.mode!r}: {weights}; nothing would be trained"
            raise ValueError(msg)
        self.weights = weights
        return weights

    @property
    def uses_head(self) -> bool:
        """Whether the student's classification head is trained (else DDP would see it as unused)."""
        return self.weights["classification"] > 0 or self.weights["soft_label"] > 0

    def task(
        self, images: torch.Tensor, paths: Sequence[str], categories: Sequence[str], train: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images as the student sees them and their task labels ``(N,)`` (``None`` when the head is not trained).

        Training draws a random transform per image; validation uses a fixed one per position, so ``val_loss``
        is comparable between epochs.
        """
        if not self.uses_head:
            return images, None
        if len(categories) > 1:
            return images, category_labels(paths, categories, images.device)
        draw = random_transform_labels if train else fixed_transform_labels
        labels = draw(len(images), self.num_transforms, images.device)
        return apply_transforms(images, labels), labels

    def forward(
        self,
        student: Student,
        teacher: Teacher | None,
        images: torch.Tensor,
        paths: Sequence[str],
        categories: Sequence[str],
        train: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for pre-processed normal ``images`` with image ``paths`` (the category is read from them).

        Returns:
            ``loss`` (the weighted student objective), its non-zero-weight terms by name, and
            ``teacher_head`` (cross-entropy of the teacher's probe, optimised alongside) when present.
        """
        images, labels = self.task(images, paths, categories, train)
        output = student(images)
        weights = self.weights
        terms: dict[str, torch.Tensor] = {}
        if weights["classification"] > 0:
            terms["classification"] = F.cross_entropy(output.logits, labels)
        extra: dict[str, torch.Tensor] = {}
        if teacher is not None:
            teacher_maps, teacher_logits = teacher.to(images.device)(images)
            if weights["feature"] > 0:
                student_maps = [output.features.conv2_x, output.features.conv3_x]
                terms["feature"] = self.feature_loss(*teacher.align(teacher_maps, student_maps))
            if teacher_logits is not None:
                terms["soft_label"] = self.soft_label_loss(teacher_logits, output.logits)
                extra["teacher_head"] = F.cross_entropy(teacher_logits, labels)
        loss = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return {"loss": loss, **terms, **extra}
