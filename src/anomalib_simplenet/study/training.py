"""Fit one setting: early stopping and checkpoint choice on the validation loss, loss history, reconstructions."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from anomalib.callbacks import ModelCheckpoint
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.models import AnomalibModule
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping

from anomalib_simplenet.components.backbone import weights_source
from anomalib_simplenet.experiments.history import LossHistory, loss_figure
from anomalib_simplenet.models.unet_ae import ReconstructionSaver

from .settings import Setting, model_class

# Relative rise of the last validation loss over its minimum read as over-fitting (noise on a few images is ~5%).
OVERFIT_RISE = 0.10


@dataclass
class FitResult:
    """One fitted setting in one scope (a category, or ``all`` for the all-categories model)."""

    setting: Setting
    scope: str
    run_dir: Path
    init_args: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str = ""
    model: AnomalibModule | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None  # epoch (from 1) of the checkpoint kept, None = no monitored checkpoint
    fit_s: float = math.nan
    weights: str = ""

    @property
    def best_val_loss(self) -> float:
        """Lowest validation loss over the epochs (NaN when none was logged)."""
        values = [row["val_loss"] for row in self.history if math.isfinite(row["val_loss"])]
        return min(values) if values else math.nan


class EpochPrinter(Callback):
    """One line per training epoch: losses so far (the study's progress display); also notes the teacher's weights.

    A distilling model holds its teacher during ``fit`` only, so its weights source is read at the start.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.teacher_weights = ""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record where the teacher's weights came from (if the model distils)."""
        del trainer
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            self.teacher_weights = weights_source(getattr(teacher, "backbone", teacher))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the epoch's losses (Lightning validates before this hook, so both are known)."""
        del pl_module
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        text = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        print(f"{self.prefix} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {text}", flush=True)


def overfitting_note(history: list[dict[str, float]], best_epoch: int | None) -> str:
    """A sentence on the curves: where validation loss bottomed out and whether it then rose while training fell."""
    rows = [r for r in history if math.isfinite(r.get("val_loss", math.nan))]
    if not rows:
        return "no validation loss (nothing trained)"
    best = min(rows, key=lambda r: r["val_loss"])
    last = rows[-1]
    rise = (last["val_loss"] - best["val_loss"]) / max(abs(best["val_loss"]), 1e-12)
    train_falls = math.isfinite(last["train_loss"]) and last["train_loss"] < best.get("train_loss", math.inf)
    kept = f"; checkpoint of epoch {best_epoch} kept" if best_epoch else ""
    if len(rows) < 2:
        return f"one epoch only: no trend to read{kept}"
    if best is last:
        return f"validation loss still falling at the last epoch {int(last['epoch'])}: not over-fitted{kept}"
    if rise <= OVERFIT_RISE:
        return (f"validation loss flat after epoch {int(best['epoch'])} (+{100 * rise:.0f}% at the end): "
                f"converged, no clear over-fitting{kept}")
    if train_falls:
        return (f"over-fits after epoch {int(best['epoch'])}: validation loss +{100 * rise:.0f}% by epoch "
                f"{int(last['epoch'])} while training loss kept falling{kept}")
    return (f"validation loss +{100 * rise:.0f}% after epoch {int(best['epoch'])} while training loss did not fall "
            f"either: unstable training (learning rate?), not over-fitting{kept}")


def fit_setting(
    setting: Setting,
    init_args: dict[str, Any],
    scope: str,
    datamodule: AnomalibDataModule,
    run_dir: Path,
    max_epochs: int,
    patience: int,
    seed: int,
) -> FitResult:
    """Fit ``setting`` on ``datamodule`` in ``run_dir`` and load its checkpoint of lowest validation loss.

    Never raises for a failing setting: the result carries ``status="failed"`` and the error, and the study goes on.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result = FitResult(setting, scope, run_dir, init_args)
    prefix = f"[study] {scope} {setting.label}"
    start = time.perf_counter()
    try:
        seed_everything(seed, workers=True)
        model = model_class(setting.kind)(**init_args)
        history, printer = LossHistory(), EpochPrinter(prefix)
        callbacks: list[Callback] = [history, printer]
        checkpoint = None
        if setting.kind != "teacher":
            checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_loss", mode="min",
                                         filename="best", auto_insert_metric_name=False)
            callbacks += [EarlyStopping(monitor="val_loss", mode="min", patience=patience), checkpoint]
        if setting.kind == "unet_ae":
            callbacks.append(ReconstructionSaver(every_n_epochs=max(1, max_epochs // 4), num_images=4))
        engine = Engine(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=run_dir / "engine",
                        logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)
        engine.fit(model, datamodule=datamodule)
        if checkpoint is not None and checkpoint.best_model_path:
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
            model.load_state_dict(state["state_dict"])
            result.best_epoch = int(state["epoch"]) + 1
        model.eval()
        result.model = model
        result.history = history.rows()
        result.weights = _weights_line(model, printer.teacher_weights)
        if result.history:
            history.save_csv(run_dir / "history.csv")
            figure = loss_figure({setting.label: result.history}, title=f"{scope}: {setting.label}")
            figure.savefig(run_dir / "loss_curve.png", dpi=90)
    except Exception as error:  # noqa: BLE001 - one failed setting must not stop the study
        result.status, result.error = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]
        (run_dir / "error.txt").write_text(traceback.format_exc())
        print(f"{prefix} FAILED: {result.error}", flush=True)
    result.fit_s = time.perf_counter() - start
    return result


def _weights_line(model: AnomalibModule, teacher_weights: str) -> str:
    """Where the model's pretrained weights came from."""
    network = getattr(model.model, "network", None)
    if network is not None:
        return f"{model.hparams.get('backbone')}: {weights_source(network)}"
    if teacher_weights:
        return f"student trained from scratch, teacher {model.hparams.get('teacher_backbone', 'resnet18')}: " \
            f"{teacher_weights}"
    return "trained from scratch"
