"""Reliability guards shared by every plugin model: divergence, checkpoints, resume, data pre-flight.

A model opts in with a few small hooks (see ``UNetAE`` / ``DistillClassifier``)::

    def configure_callbacks(self):
        return [*super().configure_callbacks(), *guard_callbacks()]  # keep anomalib's component callbacks

    # in training_step, once the loss terms exist (names the term in the error):
    check_finite_terms({"l2": l2, "ssim": ssim}, model=self)

    def on_load_checkpoint(self, checkpoint):
        check_checkpoint(self, checkpoint)  # before anomalib/Lightning touch the weights
        super().on_load_checkpoint(checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        check_checkpoint_file(cls, checkpoint_path)  # before the constructor runs (it may fetch weights)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def to_torch(self, *args, **kwargs):  # and to_onnx alike (to_openvino goes through it)
        check_export_ready(self)  # no thresholds yet: refuse, instead of exporting meaningless labels
        return super().to_torch(*args, **kwargs)

:class:`TrainingGuard` (from :func:`guard_callbacks`) then

* stops the run at the first non-finite loss (``on_before_backward``, which Lightning also calls for manual
  optimisation, e.g. SimpleNet's ``manual_backward``) or gradient (``on_before_optimizer_step``), before any
  parameter changes, with :class:`NonFiniteLossError` naming the step;
* refuses to write a checkpoint whose weights are not finite, and stamps the model class into each checkpoint
  (read back by :func:`check_checkpoint`);
* saves the global RNG states in each checkpoint and restores them when ``fit(ckpt_path=...)`` resumes, so the
  resumed run shuffles and samples noise as the uninterrupted one would have (Lightning restores weights,
  optimisers and counters, not RNGs);
* checks the datamodule's image and mask files before the first step (:mod:`anomalib_simplenet.data.checks`).

Limits: the stop comes after the forward pass, so BatchNorm running statistics have seen the bad batch: resume
from the last checkpoint rather than reuse the in-memory model. Exact resume is tested for the end-of-epoch
checkpoints anomalib's ``ModelCheckpoint`` writes; mid-epoch ones (``every_n_train_steps``) are not covered. A
``save_weights_only`` checkpoint skips callback hooks, hence the finite-weights check, the stamp and the RNGs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from anomalib_simplenet.data.checks import DataCheckError, check_datamodule

from .checkpoint_guard import (
    CheckpointMismatchError,
    NotFittedError,
    check_checkpoint,
    check_checkpoint_file,
    check_export_ready,
    stamp_checkpoint,
)
from .rng_state import capture_rng_state, restore_rng_state

__all__ = [
    "CheckpointMismatchError",
    "DataCheckError",
    "NonFiniteLossError",
    "NotFittedError",
    "TrainingGuard",
    "check_checkpoint",
    "check_checkpoint_file",
    "check_export_ready",
    "check_finite_terms",
    "guard_callbacks",
    "non_finite_parameters",
]

_ADVICE = (
    "Training stopped before the weights were updated; the last checkpoint (if any) still has finite weights. "
    "Usual causes: a learning rate that is too high, or an extreme input image."
)


class NonFiniteLossError(FloatingPointError):
    """A loss term, gradient or weight became NaN or infinite during training."""


def _where(model: LightningModule | str | None, step: int | None) -> tuple[str, str]:
    """Model name and ``training step N (epoch E, batch B)`` from whatever is known."""
    if isinstance(model, str) or model is None:
        return model or "model", f"training step {step}" if step is not None else "training"
    trainer = model._trainer  # noqa: SLF001 (``model.trainer`` raises when no trainer is attached)
    if trainer is None:
        return type(model).__name__, f"training step {step}" if step is not None else "training"
    step = trainer.global_step if step is None else step
    batch = trainer.fit_loop.epoch_loop.batch_idx
    return type(model).__name__, f"training step {step} (epoch {trainer.current_epoch}, batch {batch})"


def _value(value: torch.Tensor | float) -> str:
    tensor = torch.as_tensor(value).detach()
    if tensor.numel() == 1:
        return str(tensor.item())
    return f"{int((~torch.isfinite(tensor)).sum())} of {tensor.numel()} values non-finite"


def check_finite_terms(
    terms: Mapping[str, torch.Tensor | float],
    step: int | None = None,
    model: LightningModule | str | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and every loss term that is NaN or infinite.

    Args:
        terms: loss terms by name (scalars or tensors), e.g. ``{"l2": l2, "ssim": ssim}``.
        step: training step; default = the attached trainer's ``global_step``.
        model: the LightningModule (its class, epoch and batch go into the message) or a name.
    """
    bad = {name: value for name, value in terms.items() if not bool(torch.isfinite(torch.as_tensor(value)).all())}
    if not bad:
        return
    name, where = _where(model, step)
    listed = ", ".join(f"{term} = {_value(value)}" for term, value in bad.items())
    msg = f"{name}: non-finite loss term(s) at {where}: {listed}. {_ADVICE}"
    raise NonFiniteLossError(msg)


def non_finite_parameters(module: nn.Module, gradients: bool = False) -> list[str]:
    """Names of parameters and normalisation statistics (or of gradients) holding NaN or infinite values.

    Other buffers are skipped: some are NaN by design until fitted (post-processor thresholds, percentiles).
    """
    if gradients:
        items = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
    else:
        running = [(n, b) for n, b in module.named_buffers() if n.rsplit(".", 1)[-1].startswith("running_")]
        items = list(module.named_parameters()) + running
    floats = [(n, t) for n, t in items if t.is_floating_point()]
    if not floats or bool(torch.stack([torch.isfinite(t).all() for _, t in floats]).all()):
        return []
    return [n for n, t in floats if not bool(torch.isfinite(t).all())]


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class TrainingGuard(Callback):
    """Divergence stop, finite checkpoints, RNG state across resume and data pre-flight (module docstring).

    Args:
        check_data: check the datamodule's image and mask files in ``setup``.
        restore_rng: save the global RNG states in checkpoints and restore them on resume.
    """

    def __init__(self, check_data: bool = True, restore_rng: bool = True) -> None:
        self.check_data = check_data
        self.restore_rng = restore_rng
        self._pending_rng: dict[str, Any] | None = None
        self._fitting = False

    # ------------------------------------------------------------------------------------------ data
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the files of the splits ``stage`` uses (the datamodule is already set up here)."""
        del pl_module
        if self.check_data and trainer.datamodule is not None:
            check_datamodule(trainer.datamodule, str(getattr(stage, "value", stage)))  # TrainerFn → "fit"

    # ------------------------------------------------------------------------------------ divergence
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        """Stop before a non-finite loss reaches backward (automatic and manual optimisation)."""
        del trainer
        check_finite_terms({"loss (total)": loss}, model=pl_module)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: object) -> None:
        """Stop before a non-finite gradient reaches the weights (e.g. an overflow inside a finite loss)."""
        del trainer, optimizer
        bad = non_finite_parameters(pl_module, gradients=True)
        if bad:
            name, where = _where(pl_module, None)
            msg = f"{name}: non-finite gradient(s) at {where} in {_listed(bad)}. {_ADVICE}"
            raise NonFiniteLossError(msg)

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to write non-finite weights; stamp the model class for :func:`check_checkpoint`."""
        bad = non_finite_parameters(pl_module)
        if bad:
            name, where = _where(pl_module, None)
            msg = f"{name}: refusing to save a checkpoint at {where}: non-finite values in {_listed(bad)}"
            raise NonFiniteLossError(msg)
        del trainer
        stamp_checkpoint(pl_module, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """The global RNG states at the moment the checkpoint is written (plain tensors and numbers)."""
        return {"rng": capture_rng_state()} if self.restore_rng else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved RNG states for ``fit``; restored at once if ``fit`` already started (late-restoring
        strategies), else in ``on_fit_start``. A ``test(ckpt_path=...)`` never applies them."""
        self._pending_rng = state_dict.get("rng") if self.restore_rng else None
        if self._fitting:
            self._apply_pending_rng()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restore a resumed run's RNG states: after the checkpoint is read, before the training dataloader's
        iterator is created (Lightning creates it before ``on_train_start``; it draws its base seed then)."""
        del trainer, pl_module
        self._fitting = True
        self._apply_pending_rng()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the fit (the instance may be reused by a later trainer call)."""
        del trainer, pl_module
        self._fitting = False

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """As ``on_fit_end``: a stopped fit is over too."""
        del trainer, pl_module, exception
        self._fitting = False

    def _apply_pending_rng(self) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None


def guard_callbacks(check_data: bool = True) -> list[Callback]:
    """The callbacks every plugin model returns from ``configure_callbacks`` (a fresh instance per call)."""
    return [TrainingGuard(check_data=check_data)]
