"""EarlyStoppingOnceMoved: patience cannot end a run on a value that has never moved (or sits at the value that
means "nothing learnt"), and every stop is logged with its reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel

from anomalib_simplenet.callbacks import EarlyStoppingOnceMoved

LOGGER = "anomalib_simplenet.callbacks.early_stopping"


class ScriptedValLoss(BoringModel):
    """Logs ``val_loss`` = ``values[epoch]`` (the last value once the script ends)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        del batch, batch_idx
        self.log("val_loss", self.values[min(self.current_epoch, len(self.values) - 1)])


def _epochs_run(values: list[float], stopper: EarlyStopping, tmp_path: Path, max_epochs: int = 12) -> int:
    trainer = Trainer(max_epochs=max_epochs, callbacks=[stopper], default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu")  # fmt: skip
    trainer.fit(ScriptedValLoss(values))
    return trainer.current_epoch


def test_a_loss_flat_from_the_start_runs_to_max_epochs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SimpleNet with noise too small: val_loss 1.000 from the first validation. Lightning's EarlyStopping ends the
    run after its patience; this one does not, and says why (once)."""
    flat = [1.0, 1.0002, 1.0001, 1.0]
    assert _epochs_run(flat, EarlyStopping(monitor="val_loss", patience=3), tmp_path) == 4
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert _epochs_run(flat, EarlyStoppingOnceMoved(monitor="val_loss", patience=3), tmp_path) == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "val_loss" in warnings[0] and "first value 1" in warnings[0]


def test_stuck_value_holds_after_a_descent_onto_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An untrained head starts above SimpleNet's ceiling 1.0 and settles on it: moved, but still stuck."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    settling = [1.15, 1.06, 1.02, 1.004, 1.004, 1.004]
    assert _epochs_run(settling, EarlyStoppingOnceMoved(monitor="val_loss", patience=2), tmp_path) < 12
    stopper = EarlyStoppingOnceMoved(monitor="val_loss", patience=2, stuck_value=1.0)
    assert _epochs_run(settling, stopper, tmp_path) == 12
    assert "its value when nothing is learnt" in caplog.text


def test_a_moving_loss_stops_with_a_logged_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stopper = EarlyStoppingOnceMoved(monitor="val_loss", patience=2, stuck_value=1.0)
    assert _epochs_run([1.0, 1.0, 0.6, 0.5, 0.5, 0.5], stopper, tmp_path) == 6  # best at epoch 3, 2 more, stop
    assert stopper.stopped_epoch == 5 and stopper.moved
    assert "Early stopping: Monitored metric val_loss did not improve in the last 2 records" in caplog.text
    restored = EarlyStoppingOnceMoved(monitor="val_loss")
    restored.load_state_dict(stopper.state_dict())
    assert (restored.first_value, restored.moved, restored.wait_count) == (1.0, True, 2)
    with pytest.raises(ValueError, match="flat_tolerance"):
        EarlyStoppingOnceMoved(monitor="val_loss", flat_tolerance=-1.0)
