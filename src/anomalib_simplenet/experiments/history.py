"""Per-epoch train/validation loss of a ``fit``, as a Lightning callback, a CSV file and a PNG plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLUMNS = ("epoch", "train_loss", "val_loss")


def _metric(trainer: Trainer, *names: str) -> float:
    """First of ``names`` present in the trainer's callback metrics, as a float (NaN when none is)."""
    for name in names:
        value = trainer.callback_metrics.get(name)
        if value is not None:
            return float(value)
    return math.nan


class LossHistory(Callback):
    """Record ``train_loss`` and ``val_loss`` once per epoch while fitting.

    Read at ``on_train_epoch_end`` and ``on_validation_end``: both run after the model's own epoch-end hooks
    have logged (a model may log ``val_loss`` in ``on_validation_epoch_end``, after callbacks' hooks of that name).
    Validation outside ``fit`` (e.g. the one ``Engine.test`` may run first) and sanity checks are ignored.

    Args:
        train_key: logged training loss (``<key>_epoch`` is preferred when it was logged per step too).
        val_key: logged validation loss.
    """

    def __init__(self, train_key: str = "train_loss", val_key: str = "val_loss") -> None:
        self.train_key = train_key
        self.val_key = val_key
        self.epochs: dict[int, dict[str, float]] = {}

    def _row(self, epoch: int) -> dict[str, float]:
        return self.epochs.setdefault(epoch, {"train_loss": math.nan, "val_loss": math.nan})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Store the epoch's aggregated training loss."""
        del pl_module
        self._row(trainer.current_epoch)["train_loss"] = _metric(trainer, f"{self.train_key}_epoch", self.train_key)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Store the validation loss of this epoch's validation during ``fit``."""
        del pl_module
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._row(trainer.current_epoch)["val_loss"] = _metric(trainer, self.val_key)

    def rows(self) -> list[dict[str, float]]:
        """One ``{"epoch", "train_loss", "val_loss"}`` per epoch (epochs counted from 1), in order."""
        return [{"epoch": epoch + 1, **values} for epoch, values in sorted(self.epochs.items())]

    def last(self, key: str) -> float:
        """Last finite value of ``key`` (``train_loss`` or ``val_loss``); NaN when there is none."""
        values = [row[key] for row in self.rows() if math.isfinite(row[key])]
        return values[-1] if values else math.nan

    def best(self, key: str = "val_loss") -> float:
        """Lowest finite value of ``key``; NaN when there is none."""
        values = [row[key] for row in self.rows() if math.isfinite(row[key])]
        return min(values) if values else math.nan

    def save_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV at ``path``; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows())
        return path


def loss_figure(histories: Mapping[str, list[dict[str, float]]], title: str = "") -> Figure:
    """Train (solid) and validation (dashed) loss per epoch, one colour per run.

    Args:
        histories: run name → :meth:`LossHistory.rows` (or rows read back from its CSV).
        title: figure title.
    """
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for index, (name, rows) in enumerate(histories.items()):
        colour = f"C{index % 10}"
        epochs = [row["epoch"] for row in rows]
        prefix = f"{name} " if len(histories) > 1 else ""
        axis.plot(epochs, [row["train_loss"] for row in rows], "o-", color=colour, label=f"{prefix}train_loss")
        axis.plot(epochs, [row["val_loss"] for row in rows], "s--", color=colour, label=f"{prefix}val_loss")
    axis.set(xlabel="epoch", ylabel="loss", title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return figure


def read_history_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows written by :meth:`LossHistory.save_csv`."""
    with Path(path).open(newline="") as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
