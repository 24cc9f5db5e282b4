"""The distillation study (``python -m anomalib_simplenet.study --help``, ``docs/measuring.md``): does a small
student distilled from a pretrained teacher detect anomalies as well as the teacher's own features
(:class:`~anomalib_simplenet.models.TeacherMahalanobis`), far more cheaply, and better than the same student trained
from scratch? A layer on :mod:`anomalib_simplenet.lab`."""

from .run import StudyConfig, run_study

__all__ = ["StudyConfig", "run_study"]
