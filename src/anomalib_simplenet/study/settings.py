"""The study's model kinds and the constructor arguments of a setting (:class:`..lab.settings.Setting`, read from
``configs/study.yaml`` by :func:`..lab.settings.load_settings`).

The study sets what must be equal across models and settings: ``image_size`` of every model, the teacher network
of the reference (``backbone``) and of the distilled students (``teacher_backbone``) from ``--teacher``, and
``pre_trained`` of both (``--random-teacher`` for plumbing runs only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_simplenet.lab.settings import Setting, load_settings

KINDS = ("teacher", "scratch", "distill", "unet_ae")
KIND_TITLES = {
    "teacher": "teacher features (Mahalanobis)",
    "scratch": "DistillClassifier scratch",
    "distill": "DistillClassifier distilled",
    "unet_ae": "UNetAE",
}


def study_settings(path: Path, kinds: Sequence[str] = KINDS, per_kind: int | None = None) -> list[Setting]:
    """The settings of ``kinds`` in the study file ``path`` (at most ``per_kind`` of each)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        msg = f"--models: unknown kind(s) {unknown}; choose from {list(KINDS)}"
        raise ValueError(msg)
    return load_settings(path, kinds, per_kind, known=KINDS)


def model_class(kind: str) -> type:
    """The anomalib model class of a kind."""
    if kind == "teacher":
        from anomalib_simplenet.models import TeacherMahalanobis

        return TeacherMahalanobis
    if kind == "unet_ae":
        from anomalib_simplenet.models import UNetAE

        return UNetAE
    from anomalib_simplenet.models import DistillClassifier

    return DistillClassifier


def resolve_init_args(
    setting: Setting, image_size: int, teacher: str, pre_trained: bool, categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """The constructor arguments of ``setting`` with the study-wide ones applied (see the module docstring)."""
    args = {**setting.init_args, "image_size": image_size}
    if setting.kind == "teacher":
        args.update(backbone=teacher, pre_trained=pre_trained)
    elif setting.kind in ("scratch", "distill"):
        args["mode"] = setting.kind
        args["categories"] = list(categories) if categories else None
        if setting.kind == "distill":
            args.update(pre_trained=pre_trained, teacher_backbone=teacher)
        else:
            args["pre_trained"] = False
            args.pop("teacher_backbone", None)
    return args
