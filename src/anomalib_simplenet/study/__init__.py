"""The distillation study: does a small student distilled from a pretrained teacher detect anomalies as well as the
teacher's own features (:class:`~anomalib_simplenet.models.TeacherMahalanobis`), far more cheaply, and better than
the same student trained from scratch?

``python -m anomalib_simplenet.study --help``. A layer on :mod:`anomalib_simplenet.lab`. Modules: ``settings`` (model
kinds, arguments of the settings in ``configs/study.yaml``), ``training`` (one setting's fit), ``cost`` (latency,
size, FLOPs, quantization), ``clusters`` (DBSCAN), ``figures``, ``report``, ``run`` (the orchestration) and
``merge`` (one report from runs split per category).
"""

from anomalib_simplenet.models import TeacherMahalanobis

from .run import StudyConfig, run_study

__all__ = ["StudyConfig", "TeacherMahalanobis", "run_study"]
