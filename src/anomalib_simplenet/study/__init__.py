"""The distillation study: does a small student distilled from a pretrained teacher detect anomalies as well as the
teacher's own features, far more cheaply, and better than the same student trained from scratch?

``python -m anomalib_simplenet.study --help``. Modules: ``settings`` (the YAML settings in ``configs/study/``),
``data``, ``teacher_reference`` (the frozen teacher as a Mahalanobis detector), ``training`` (one setting's fit),
``evaluation`` (metrics, thresholds), ``cost`` (latency, size, quantization via :mod:`..benchmark`), ``clusters``
(DBSCAN via :mod:`..callbacks`), ``figures``, ``report``/``html`` and ``run`` (the orchestration).
"""

from .run import StudyConfig, run_study
from .teacher_reference import TeacherMahalanobis

__all__ = ["StudyConfig", "TeacherMahalanobis", "run_study"]
