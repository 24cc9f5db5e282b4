"""DistillClassifier model package."""

from .lightning_model import DistillClassifier
from .torch_model import DistillClassifierModel

__all__ = ["DistillClassifier", "DistillClassifierModel"]
