"""Interrupted training resumes to the uninterrupted result; the same seed gives the same metrics twice (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_simplenet.reliability.rng_state import capture_rng_state, restore_rng_state

from .reliability_support import checkpoint_path, datamodule, engine, make_model, model_names, tiny_data

EPOCHS = 2


class RecordOrder(Callback):
    """Training image paths per epoch, in the order the dataloader delivered them."""

    def __init__(self) -> None:
        self.order: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        del pl_module, batch_idx
        self.order.setdefault(trainer.current_epoch, []).extend(batch.image_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("resume_data"), n_train=10)  # 3 batches, the last one of 2


def _fit(name: str, root: Path, data: Path, epochs: int, ckpt: Path | None = None, seed: int = 0) -> tuple:
    seed_everything(seed, verbose=False)
    model, order = make_model(name), RecordOrder()
    fitted = engine(root, epochs=epochs, callbacks=[order])
    fitted.fit(model, datamodule=datamodule(data), ckpt_path=ckpt)
    return model, fitted, order


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Per model (lazily): the uninterrupted 2-epoch run, fitted and tested."""
    runs: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in runs:
            model, fitted, order = _fit(name, tmp_path_factory.mktemp(f"{name}_full"), data, EPOCHS)
            metrics = fitted.test(model, datamodule=datamodule(data), verbose=False)[0]
            runs[name] = (model, order, metrics)
        return runs[name]

    return get


def _assert_same_weights(actual: LightningModule, expected: LightningModule, atol: float = 1e-6) -> None:
    expected_state = expected.state_dict()
    for key, value in actual.state_dict().items():
        torch.testing.assert_close(value, expected_state[key], atol=atol, rtol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("name", model_names())
def test_resume_gives_the_uninterrupted_weights(name: str, data: Path, uninterrupted: object, tmp_path: Path) -> None:
    """1 epoch, stop, resume from the checkpoint (another process would start with another RNG state) → epoch 2
    equals the uninterrupted run: same shuffle order, same noise/masks/labels, same weights and thresholds."""
    full_model, full_order, _ = uninterrupted(name)
    _, first, _ = _fit(name, tmp_path / "first", data, epochs=1)
    resumed, _, order = _fit(name, tmp_path / "resumed", data, EPOCHS, ckpt=checkpoint_path(first), seed=123)
    assert order.order[1] == full_order.order[1], "shuffle order of the resumed epoch"
    _assert_same_weights(resumed, full_model)


@pytest.mark.parametrize("name", model_names())
def test_same_seed_gives_the_same_metrics(name: str, data: Path, uninterrupted: object, tmp_path: Path) -> None:
    full_model, full_order, metrics = uninterrupted(name)
    model, fitted, order = _fit(name, tmp_path, data, EPOCHS)
    again = fitted.test(model, datamodule=datamodule(data), verbose=False)[0]
    assert order.order == full_order.order
    assert again == metrics
    _assert_same_weights(model, full_model, atol=0)


def test_rng_state_round_trip_is_plain_data(tmp_path: Path) -> None:
    """Python, NumPy and torch draws repeat after a restore, and the state loads with ``weights_only=True``."""
    import random

    import numpy as np

    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    # The global generators are the point here.
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first  # noqa: NPY002
