"""The distillation study: does a small student distilled from a pretrained teacher detect anomalies as well as the
teacher's own features, far more cheaply, and better than the same student trained from scratch?

``python -m anomalib_simplenet.study --help``. A layer on :mod:`anomalib_simplenet.lab` (data, fit, scores,
deployment variants, tables). Modules: ``settings`` (model kinds and the arguments of the settings named in
``configs/study.yaml``), ``teacher_reference`` (the frozen teacher as a Mahalanobis detector), ``training`` (one
setting's fit), ``cost`` (latency, size, quantization), ``clusters`` (DBSCAN via :mod:`..callbacks`), ``figures``,
``report``, ``run`` (the orchestration) and ``merge`` (one report from runs split per category).
"""

from .run import StudyConfig, run_study
from .teacher_reference import TeacherMahalanobis

__all__ = ["StudyConfig", "TeacherMahalanobis", "run_study"]
