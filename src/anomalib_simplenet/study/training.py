"""Fit one setting of the study with :func:`anomalib_simplenet.lab.fit.fit`: early stopping and the checkpoint of
lowest validation loss (models that train), loss curve, UNetAE reconstructions, where the weights came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule
from lightning.pytorch import seed_everything

from anomalib_simplenet.components.backbone import weights_source
from anomalib_simplenet.lab.figures import loss_figure
from anomalib_simplenet.lab.fit import FitResult, fit, guarded
from anomalib_simplenet.lab.settings import Setting
from anomalib_simplenet.models.unet_ae import ReconstructionSaver

from .settings import model_class


def fit_setting(
    setting: Setting, init_args: dict[str, Any], scope: str, datamodule: AnomalibDataModule, run_dir: Path,
    max_epochs: int, patience: int, seed: int,
) -> FitResult:
    """Fit ``setting`` in ``run_dir``; never raises (a failure is ``status="failed"`` and the study goes on)."""
    prefix = f"[study] {scope} {setting.label}"
    built = FitResult(setting.label, run_dir)
    with guarded(built, prefix):  # e.g. an unknown network: this setting fails, the study goes on
        seed_everything(seed, workers=True)  # before the model: its random initialisation is part of the setting
        model = model_class(setting.kind)(**init_args)
    if built.status != "ok":
        return built
    trains = setting.kind != "teacher"
    saver = [ReconstructionSaver(every_n_epochs=max(1, max_epochs // 4), num_images=4)] if setting.kind == "unet_ae" \
        else []
    result = fit(setting.label, model, datamodule, run_dir, max_epochs, patience=patience if trains else None,
                 callbacks=saver, prefix=prefix)
    if result.status == "ok" and result.history:
        loss_figure({setting.label: result.history}, title=f"{scope}: {setting.label}").savefig(
            run_dir / "loss_curve.png", dpi=90)
    return result


def weights_line(model: AnomalibModule | None) -> str:
    """Where the model's pretrained weights came from."""
    if model is None:
        return ""
    network = getattr(model.model, "network", None)
    if network is not None:
        return f"{model.hparams.get('backbone')}: {weights_source(network)}"
    teacher = getattr(model, "teacher_weights_source", None)
    if teacher:
        return f"student trained from scratch, teacher {model.hparams.get('teacher_backbone', 'resnet18')}: {teacher}"
    return "trained from scratch"
