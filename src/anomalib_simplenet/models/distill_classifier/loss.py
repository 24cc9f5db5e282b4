"""Training losses of DistillClassifier: STPM-style feature matching and soft-label distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class FeatureDistillationLoss(nn.Module):
    """Feature matching of STPM (Wang et al., 2021), summed over stages.

    Each location's feature vector is L2-normalised along channels, for teacher and student alike; the
    per-location loss is ``½‖t̂ − ŝ‖²`` (0 when aligned, 1 when orthogonal, 2 when opposite). It is averaged
    over locations — and, unlike STPM which sums over the batch, over images too, so the value does not
    depend on the batch size.
    """

    @staticmethod
    def location_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """Per-location loss ``(N, H, W)`` for maps ``(N, C, H, W)`` of equal shape."""
        if teacher.shape != student.shape:
            msg = f"teacher map {tuple(teacher.shape)} and student map {tuple(student.shape)} differ in shape"
            raise ValueError(msg)
        return 0.5 * (F.normalize(teacher, dim=1) - F.normalize(student, dim=1)).pow(2).sum(dim=1)

    def forward(self, teacher_maps: Sequence[torch.Tensor], student_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over stages of the mean per-location loss."""
        losses = [self.location_loss(t, s).mean() for t, s in zip(teacher_maps, student_maps, strict=True)]
        return torch.stack(losses).sum()


class SoftLabelDistillationLoss(nn.Module):
    """Hinton et al. (2015) distillation: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over images.

    The ``T²`` factor keeps gradient magnitudes independent of the temperature ``T``.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            msg = f"temperature must be > 0, got {temperature}"
            raise ValueError(msg)
        self.temperature = temperature

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """Loss for logits ``(N, K)``; the teacher's are detached (soft labels are targets, not parameters)."""
        temperature = self.temperature
        target = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
        prediction = F.log_softmax(student_logits / temperature, dim=1)
        return F.kl_div(prediction, target, reduction="batchmean", log_target=True) * temperature**2
