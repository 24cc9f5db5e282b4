"""The study's model kinds, the constructor arguments of a setting (from ``configs/study.yaml``) and its fit.

The study sets what must be equal across models and settings: ``image_size`` of every model, the teacher network
of the reference and SimpleNet (``backbone``) and of the distilled students (``teacher_backbone``), and
``pre_trained`` of all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from lightning.pytorch import seed_everything

from anomalib_simplenet.lab.figures import loss_figure
from anomalib_simplenet.lab.fit import FitResult, fit, guarded
from anomalib_simplenet.lab.settings import Setting, load_settings
from anomalib_simplenet.models.unet_ae import ReconstructionSaver

KIND_TITLES = {
    "teacher": "teacher features (Mahalanobis)",
    "scratch": "DistillClassifier scratch",
    "distill": "DistillClassifier distilled",
    "unet_ae": "UNetAE",
    "simplenet": "SimpleNet",  # on the teacher network; not part of the hypothesis, so not run by default
}
KIND_CLASSES = {"teacher": "TeacherMahalanobis", "scratch": "DistillClassifier", "distill": "DistillClassifier",
                "unet_ae": "UNetAE", "simplenet": "SimpleNet"}
KINDS = ("teacher", "scratch", "distill", "unet_ae")  # the hypothesis' models: run by default


def study_settings(path: Path, kinds: Sequence[str] = KINDS, per_kind: int | None = None) -> list[Setting]:
    """The settings of ``kinds`` in the study file ``path`` (at most ``per_kind`` of each)."""
    unknown = sorted(set(kinds) - set(KIND_TITLES))
    if unknown:
        msg = f"--models: unknown kind(s) {unknown}; choose from {list(KIND_TITLES)}"
        raise ValueError(msg)
    return load_settings(path, kinds, per_kind, known=tuple(KIND_TITLES))


def model_class(kind: str) -> type:
    """The anomalib model class of a kind."""
    from anomalib_simplenet import models

    return getattr(models, KIND_CLASSES[kind])


def resolve_init_args(
    setting: Setting, image_size: int, teacher: str, pre_trained: bool, categories: Sequence[str] | None = None
) -> dict[str, Any]:
    """The constructor arguments of ``setting`` with the study-wide ones applied (see the module docstring)."""
    args = {**setting.init_args, "image_size": image_size}
    if setting.kind in ("teacher", "simplenet"):
        args.update(backbone=teacher, pre_trained=pre_trained)
    elif setting.kind in ("scratch", "distill"):
        args.update(mode=setting.kind, categories=list(categories) if categories else None)
        if setting.kind == "distill":
            args.update(pre_trained=pre_trained, teacher_backbone=teacher)
        else:
            args["pre_trained"] = False
            args.pop("teacher_backbone", None)
    return args


def fit_setting(
    setting: Setting, init_args: dict[str, Any], scope: str, datamodule: AnomalibDataModule, run_dir: Path,
    max_epochs: int, patience: int, seed: int,
) -> FitResult:
    """Fit ``setting`` in ``run_dir`` (early stopping and the checkpoint of lowest validation loss for models that
    train; loss curve; UNetAE reconstructions); never raises: a failure is ``status="failed"``."""
    prefix = f"[study] {scope} {setting.label}"
    built = FitResult(setting.label, run_dir)
    with guarded(built, prefix):  # e.g. an unknown network: this setting fails, the study goes on
        seed_everything(seed, workers=True)  # before the model: its random initialisation is part of the setting
        model = model_class(setting.kind)(**init_args)
    if built.status != "ok":
        return built
    saver = [ReconstructionSaver(every_n_epochs=max(1, max_epochs // 4), num_images=4)] \
        if setting.kind == "unet_ae" else []
    result = fit(setting.label, model, datamodule, run_dir, max_epochs,
                 patience=patience if setting.kind != "teacher" else None, callbacks=saver, prefix=prefix)
    if result.status == "ok" and result.history:
        loss_figure({setting.label: result.history}, title=f"{scope}: {setting.label}").savefig(
            run_dir / "loss_curve.png", dpi=90)
    return result

