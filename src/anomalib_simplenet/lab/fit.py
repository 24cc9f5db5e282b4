"""One fit for every measurement: per-epoch losses and timings, one result type, a fit that never raises."""

from __future__ import annotations

import contextlib
import csv
import math
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from anomalib.callbacks import ModelCheckpoint
from anomalib.engine import Engine
from anomalib.models import AnomalibModule
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn

from .latency import PeakMemory, rss_mb

COLUMNS = ("epoch", "train_loss", "val_loss")
# Relative rise of the last validation loss over its minimum read as over-fitting (noise on a few images is ~5%).
OVERFIT_RISE = 0.10


def _metric(trainer: Trainer, *names: str) -> float:
    """First of ``names`` in the trainer's callback metrics, as a float (NaN when none is)."""
    value = next((trainer.callback_metrics[n] for n in names if n in trainer.callback_metrics), None)
    return math.nan if value is None else float(value)


class LossHistory(Callback):
    """``train_loss`` and ``val_loss`` (and the ``extra`` logged keys) per epoch, read after the model's own
    epoch-end hooks; sanity checks are ignored. ``prefix``: one progress line per epoch."""

    def __init__(self, extra: Sequence[str] = (), prefix: str = "") -> None:
        self.extra, self.prefix = tuple(extra), prefix
        self.epochs: dict[int, dict[str, float]] = {}

    def _row(self, trainer: Trainer) -> dict[str, float]:
        return self.epochs.setdefault(trainer.current_epoch, {"train_loss": math.nan, "val_loss": math.nan})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The epoch's aggregated training loss (``train_loss_epoch`` when it was logged per step too)."""
        row = self._row(trainer)
        row["train_loss"] = _metric(trainer, "train_loss_epoch", "train_loss")
        if self.prefix:  # Lightning validates before this hook: both losses are known
            losses = "  ".join(f"{k} {row[k]:.4f}" for k in ("train_loss", "val_loss") if math.isfinite(row[k]))
            print(f"{self.prefix} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {losses}", flush=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The validation loss (and the extra keys) of this epoch's validation during ``fit``."""
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            row = self._row(trainer)
            row["val_loss"] = _metric(trainer, "val_loss")
            row.update({k: float(trainer.callback_metrics[k]) for k in self.extra if k in trainer.callback_metrics})

    def rows(self) -> list[dict[str, float]]:
        """One ``{"epoch", "train_loss", "val_loss", ...}`` per epoch (counted from 1), in order."""
        return [{"epoch": epoch + 1, **values} for epoch, values in sorted(self.epochs.items())]

    def save_csv(self, path: str | Path) -> Path:
        """The rows' :data:`COLUMNS` as CSV at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows())
        return path


class EpochTimer(Callback):
    """Per training epoch: seconds without validation, the highest training-step memory peak (``step_peak_mb``
    absolute, ``step_extra_mb`` above the step's start) and the RSS at the epoch's end; every step's ``losses``."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.losses: list[float] = []
        self._start: float | None = None
        self._validation = self._peak = self._extra = 0.0
        self._memory: PeakMemory | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._validation, self._peak, self._extra = time.perf_counter(), 0.0, 0.0, 0.0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation -= time.perf_counter()  # validation inside an epoch is not training time

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation += time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._memory = PeakMemory(pl_module.device, collect=False).__enter__()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._memory is not None:
            self._memory.__exit__(None, None, None)
            self._peak, self._extra = max(self._peak, self._memory.absolute_mb), max(self._extra, self._memory.peak_mb)
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is not None:
            self.epochs.append({"seconds": time.perf_counter() - self._start - self._validation,
                                "step_peak_mb": self._peak, "step_extra_mb": self._extra, "rss_end_mb": rss_mb()})
            self._start = None


@dataclass
class FitResult:
    """One fit (and test): its status, model, loss history, epoch timings, checkpoint and test metrics."""

    name: str
    run_dir: Path
    status: str = "ok"  # "ok" or "failed"
    error: str = ""
    model: AnomalibModule | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # LossHistory rows
    epochs: list[dict[str, float]] = field(default_factory=list)  # EpochTimer rows
    losses: list[float] = field(default_factory=list)  # every training step's loss
    best_epoch: int | None = None  # epoch (from 1) of the checkpoint kept, None = the weights at the end
    checkpoint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # Engine.test metrics (normalised scores)
    fit_s: float = math.nan
    test_s: float = math.nan

    @property
    def best_val_loss(self) -> float:
        """Lowest validation loss over the epochs (NaN when none was logged)."""
        return min((r["val_loss"] for r in self.history if math.isfinite(r["val_loss"])), default=math.nan)


@contextlib.contextmanager
def guarded(result: FitResult, prefix: str = "") -> Iterator[FitResult]:
    """Turn an exception into ``result.status="failed"`` (first line of the error, ``error.txt`` traceback), so
    that the caller's loop goes on; ``fit_s`` is the block's time unless the block set it."""
    start = time.perf_counter()
    result.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield result
    except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
        result.status, result.error = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]
        (result.run_dir / "error.txt").write_text(traceback.format_exc())
        print(f"{prefix or result.name} FAILED: {result.error}", flush=True)
    if math.isnan(result.fit_s):
        result.fit_s = time.perf_counter() - start


def fit(  # noqa: PLR0913 (every measurement's fit: its options are the union of theirs)
    name: str, model: AnomalibModule, data: Any, run_dir: Path, max_epochs: int, patience: int | None = None,
    test: bool = False, seed: int | None = None, callbacks: Sequence[Callback] = (), history_keys: Sequence[str] = (),
    prefix: str = "", **engine_args: Any,
) -> FitResult:
    """Fit ``model`` on ``data`` with anomalib's ``Engine`` in ``run_dir``; never raises (see :func:`guarded`).
    ``patience``: early stopping on ``val_loss``, its best checkpoint loaded at the end (``None``: the last weights)."""
    result = FitResult(name, run_dir)
    with guarded(result, prefix):
        if seed is not None:
            seed_everything(seed, workers=True)
        history, timer = LossHistory(history_keys, prefix), EpochTimer()
        checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_loss" if patience else None,
                                     mode="min", filename="best", auto_insert_metric_name=False,
                                     save_top_k=1 if patience else 0, save_last=False)
        stop = [EarlyStopping(monitor="val_loss", mode="min", patience=patience)] if patience else []
        engine_args = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                       **engine_args}
        engine = Engine(max_epochs=max_epochs, default_root_dir=run_dir / "engine",
                        callbacks=[history, timer, checkpoint, *stop, *callbacks], **engine_args)
        start = time.perf_counter()
        engine.fit(model, datamodule=data)
        result.fit_s = time.perf_counter() - start
        if patience and checkpoint.best_model_path:
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
            model.load_state_dict(state["state_dict"])
            result.best_epoch, result.checkpoint = int(state["epoch"]) + 1, checkpoint.best_model_path
        result.model, result.history, result.epochs, result.losses = model, history.rows(), timer.epochs, timer.losses
        if result.history:
            history.save_csv(run_dir / "history.csv")
        if test:
            start = time.perf_counter()
            result.metrics = {k: float(v) for k, v in engine.test(model, datamodule=data, verbose=False)[0].items()}
            result.test_s = time.perf_counter() - start
        model.eval()
    return result


def overfitting_note(history: list[dict[str, float]], best_epoch: int | None) -> str:
    """A sentence on the curves: where validation loss bottomed out and whether it then rose while training fell."""
    rows = [r for r in history if math.isfinite(r.get("val_loss", math.nan))]
    if not rows:
        return "no validation loss (nothing trained)"
    best, last = min(rows, key=lambda r: r["val_loss"]), rows[-1]
    kept = f"; checkpoint of epoch {best_epoch} kept" if best_epoch else ""
    if len(rows) < 2:
        return f"one epoch only: no trend to read{kept}"
    if best is last:
        return f"validation loss still falling at the last epoch {int(last['epoch'])}: not over-fitted{kept}"
    rise, after = (last["val_loss"] - best["val_loss"]) / max(abs(best["val_loss"]), 1e-12), int(best["epoch"])
    if rise <= OVERFIT_RISE:
        return (f"validation loss flat after epoch {after} (+{100 * rise:.0f}% at the end): converged, no clear "
                f"over-fitting{kept}")
    if math.isfinite(last["train_loss"]) and last["train_loss"] < best.get("train_loss", math.inf):
        return (f"over-fits after epoch {after}: validation loss +{100 * rise:.0f}% by epoch {int(last['epoch'])} "
                f"while training loss kept falling{kept}")
    return (f"validation loss +{100 * rise:.0f}% after epoch {after} while training loss did not fall either: "
            f"unstable training (learning rate?), not over-fitting{kept}")
