"""Hyper-parameter settings of the study: one YAML file per setting in ``configs/study/``.

A file names the model kind, the setting and the model's constructor arguments::

    kind: distill            # teacher | scratch | distill | unet_ae
    name: lr1e-3
    init_args: {mode: distill, learning_rate: 0.001, teacher_backbone: efficientnet_lite0}

The study sets what must be equal across models and settings: ``image_size`` of every model, the teacher network
of the reference (``backbone``) and of the distilled students (``teacher_backbone``) from ``--teacher``, and
``pre_trained`` of both (``--random-teacher`` for plumbing runs only).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("teacher", "scratch", "distill", "unet_ae")
KIND_TITLES = {
    "teacher": "teacher features (Mahalanobis)",
    "scratch": "DistillClassifier scratch",
    "distill": "DistillClassifier distilled",
    "unet_ae": "UNetAE",
}
# The teacher DistillClassifier used before it took a ``teacher_backbone`` argument.
FIXED_TEACHER = "resnet18"


@dataclass(frozen=True)
class Setting:
    """One model kind with one set of constructor arguments (``path``: the file it came from)."""

    kind: str
    name: str
    init_args: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def label(self) -> str:
        """``distill/lr1e-3``."""
        return f"{self.kind}/{self.name}"


def load_settings(folder: Path, kinds: Sequence[str] = KINDS, per_kind: int | None = None) -> list[Setting]:
    """Settings of ``kinds`` from ``folder/*.yaml`` (sorted by file name; at most ``per_kind`` of each)."""
    if not folder.is_dir():
        msg = f"--settings: no such folder {folder}"
        raise FileNotFoundError(msg)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        msg = f"--models: unknown kind(s) {unknown}; choose from {list(KINDS)}"
        raise ValueError(msg)
    settings: list[Setting] = []
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        kind, name = data.get("kind"), data.get("name")
        if kind not in KINDS or not name or not isinstance(data.get("init_args", {}), dict):
            msg = f"{path}: needs 'kind' (one of {list(KINDS)}), 'name' and a mapping 'init_args'"
            raise ValueError(msg)
        settings.append(Setting(kind, str(name), dict(data.get("init_args") or {}), path))
    chosen = []
    for kind in kinds:
        of_kind = [s for s in settings if s.kind == kind][:per_kind]
        if not of_kind:
            msg = f"{folder}: no setting of kind {kind!r}"
            raise ValueError(msg)
        chosen += of_kind
    return chosen


def model_class(kind: str) -> type:
    """The anomalib model class of a kind."""
    if kind == "teacher":
        from .teacher_reference import TeacherMahalanobis

        return TeacherMahalanobis
    if kind == "unet_ae":
        from anomalib_simplenet.models import UNetAE

        return UNetAE
    from anomalib_simplenet.models import DistillClassifier

    return DistillClassifier


def accepts(cls: type, argument: str) -> bool:
    """Whether ``cls``'s constructor has a parameter ``argument``."""
    return argument in inspect.signature(cls.__init__).parameters


def resolve_init_args(
    setting: Setting, image_size: int, teacher: str, pre_trained: bool, categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """The constructor arguments of ``setting`` with the study-wide ones applied (see the module docstring).

    Raises:
        ValueError: a distilled setting asks for a teacher this DistillClassifier cannot take.
    """
    args = {**setting.init_args, "image_size": image_size}
    if setting.kind == "teacher":
        args.update(backbone=teacher, pre_trained=pre_trained)
    elif setting.kind in ("scratch", "distill"):
        args["mode"] = setting.kind
        args["categories"] = list(categories) if categories else None
        if setting.kind == "distill":
            args["pre_trained"] = pre_trained
            cls = model_class("distill")
            if accepts(cls, "teacher_backbone"):
                args["teacher_backbone"] = teacher
            else:
                args.pop("teacher_backbone", None)
                if teacher != FIXED_TEACHER:
                    msg = (
                        f"this DistillClassifier has no 'teacher_backbone' argument: it distils from {FIXED_TEACHER} "
                        f"only, not from --teacher {teacher}"
                    )
                    raise ValueError(msg)
        else:
            args["pre_trained"] = False
            args.pop("teacher_backbone", None)
    return args
