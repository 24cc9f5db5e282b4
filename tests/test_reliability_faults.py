"""Training divergence: a NaN/inf loss or gradient stops the run with the step and term; no NaN checkpoint."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from anomalib_simplenet.reliability.guards import (
    NonFiniteLossError,
    TrainingGuard,
    check_finite_terms,
)

from .reliability_support import CLASSES, checkpoint_path, datamodule, engine, make_model, model_names, tiny_data

# The loss terms each model names in its check (SimpleNet: the lead's lines, see reliability/guards.py).
WEIGHT_NAMES = {"weight", "bias", "running_mean", "running_var"}
TERMS = {"simplenet": "truncated_l1", "unet_ae": "l2", "distill_classifier": "classification"}


class PoisonBatch(Callback):
    """Replace the images of one training batch by NaN (an extreme input), before the pre-processor sees them."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.poisoned_at: int | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        del pl_module, batch_idx
        batches = trainer.fit_loop.epoch_loop._batches_that_stepped  # noqa: SLF001 (batches so far, all epochs)
        if self.poisoned_at is None and batches >= self.at_step:
            batch.image.fill_(float("nan"))
            self.poisoned_at = trainer.global_step


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("faults_data"))


@pytest.mark.parametrize("name", model_names())
def test_nan_loss_stops_the_run_naming_step_and_term(name: str, data: Path, tmp_path: Path) -> None:
    """Batch 3 (2nd epoch, 2 batches per epoch) is NaN: fit stops there; the epoch-1 checkpoint stays finite."""
    torch.manual_seed(0)
    # SimpleNet's feature cache would replay epoch-0 features, so a NaN image in epoch 1 would never reach the loss.
    no_cache = {"feature_cache": False} if "feature_cache" in inspect.signature(CLASSES[name]).parameters else {}
    model = make_model(name, **no_cache)
    poison = PoisonBatch(at_step=3)
    fitted = engine(tmp_path, epochs=3, callbacks=[poison])
    with pytest.raises(NonFiniteLossError) as error:
        fitted.fit(model, datamodule=datamodule(data))
    message = str(error.value)
    assert f"training step {poison.poisoned_at} (epoch 1, batch 1)" in message
    assert TERMS[name] in message and type(model).__name__ in message
    # Parameters are untouched (BatchNorm running statistics did see the NaN batch in the forward pass: resume
    # from the last checkpoint rather than reuse the in-memory model).
    assert all(torch.isfinite(p).all() for p in model.parameters()), "stopped before the weights were updated"
    checkpoint = torch.load(checkpoint_path(fitted), map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.rsplit(".", 1)[-1] in WEIGHT_NAMES}
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


def test_check_finite_terms_names_every_bad_term() -> None:
    check_finite_terms({"l2": torch.tensor(0.5), "ssim": 0.1}, step=3, model="UNetAE")  # finite: no error
    with pytest.raises(NonFiniteLossError, match=r"UNetAE: .*training step 7: ssim = inf, map = 2 of 4 values"):
        check_finite_terms(
            {"l2": torch.tensor(0.5), "ssim": torch.tensor(float("inf")), "map": torch.tensor([1.0, float("nan")] * 2)},
            step=7, model="UNetAE",
        )


def test_non_finite_gradient_stops_before_the_optimizer_step() -> None:
    """A finite loss can still overflow in backward: the guard names the parameter before the step."""
    module = LightningModule()
    module.layer = nn.Linear(2, 2)
    module.layer.weight.grad = torch.tensor([[1.0, float("inf")], [0.0, 0.0]])
    module.layer.bias.grad = torch.zeros(2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient\(s\) at training in layer\.weight"):
        TrainingGuard().on_before_optimizer_step(None, module, None)


def test_checkpoint_with_non_finite_weights_is_refused(data: Path, tmp_path: Path) -> None:
    model = make_model("unet_ae")
    fitted = engine(tmp_path, epochs=1)
    fitted.fit(model, datamodule=datamodule(data))
    with torch.no_grad():
        model.model.head.weight[0, 0] = float("nan")
    target = tmp_path / "nan.ckpt"
    with pytest.raises(NonFiniteLossError, match=r"refusing to save a checkpoint .*model\.head\.weight"):
        fitted.trainer.save_checkpoint(target)
    assert not target.exists()
