"""Anomaly-detection models of the plugin."""

from .simplenet import SimpleNet
from .unet_ae import UNetAE
from .distill_classifier import DistillClassifier
from .teacher_mahalanobis import TeacherMahalanobis

__all__ = ["SimpleNet", "UNetAE", "DistillClassifier", "TeacherMahalanobis"]
