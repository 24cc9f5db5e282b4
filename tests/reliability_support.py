"""Shared helpers of the ``test_reliability_*`` modules: tiny models of all three kinds, tiny data, an Engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import AnomalibModule

from anomalib_simplenet import DistillClassifier, SimpleNet, UNetAE
from anomalib_simplenet.data import make_synthetic_mvtec
from anomalib_simplenet.lab import data as lab_data


SIZE = 32
TINY: dict[str, dict[str, Any]] = {
    "simplenet": {"backbone": "resnet18", "pre_trained": False, "pretrain_embed_dim": 64, "target_embed_dim": 64,
                  "discriminator_hidden": 32},
    "unet_ae": {"depth": 2, "base_channels": 4, "latent_dim": 8},
    "distill_classifier": {"mode": "scratch", "pre_trained": False, "num_transforms": 4},
}
CLASSES = {"simplenet": SimpleNet, "unet_ae": UNetAE, "distill_classifier": DistillClassifier}


def make_model(name: str, **overrides: Any) -> AnomalibModule:  # noqa: ANN401
    """Tiny model ``name`` at ``SIZE`` px (same code paths as the defaults)."""
    return CLASSES[name](**{"image_size": SIZE, **TINY[name], **overrides})


def model_names() -> list[Any]:
    """The three model names as pytest params."""
    return [pytest.param(name, id=name) for name in CLASSES]


def tiny_data(root: Path, n_train: int = 8, image_size: int = SIZE) -> Path:
    """A small synthetic MVTec-layout category ``root/synthetic``; returns ``root``."""
    make_synthetic_mvtec(root, image_size=image_size, n_train=n_train, n_test_good=4, n_test_defect=2, seed=0)
    return root


def datamodule(root: Path, batch: int = 4, cls: type = MVTecAD, **kwargs: Any) -> MVTecAD:  # noqa: ANN401
    """Datamodule over ``root/synthetic`` with a validation split taken from the test folder."""
    return lab_data.datamodule(root, "synthetic", batch_size=batch, eval_batch_size=8, cls=cls, **kwargs)


def engine(root_dir: Path, epochs: int = 1, **kwargs: Any) -> Engine:  # noqa: ANN401
    """Quiet CPU Engine."""
    return Engine(
        max_epochs=epochs, default_root_dir=root_dir, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )


def checkpoint_path(fitted: Engine) -> Path:
    """The checkpoint the Engine's ModelCheckpoint wrote."""
    callback = fitted.trainer.checkpoint_callback
    return Path(callback.best_model_path or callback.last_model_path)
