"""TeacherMahalanobis: a frozen ImageNet network's own features scored by per-location Mahalanobis distance."""

from .lightning_model import TeacherMahalanobis
from .torch_model import TeacherMahalanobisModel

__all__ = ["TeacherMahalanobis", "TeacherMahalanobisModel"]
