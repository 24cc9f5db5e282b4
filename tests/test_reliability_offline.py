"""Offline: models that can use pretrained weights fail fast and clearly without network and work from a local
file; models without pretrained weights train with the network cut."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from safetensors.torch import save_file

from anomalib_simplenet import DistillClassifier, SimpleNet
from anomalib_simplenet.components.backbone import BackboneWeightsError

from .reliability_support import datamodule, engine, make_model, tiny_data

FAST_S = 10


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket connection fails at once, and the model-hub cache is empty."""
    from huggingface_hub import constants

    def refuse(*args: object, **kwargs: object) -> None:
        del args, kwargs
        msg = "network disabled in this test"
        raise OSError(msg)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    (tmp_path / "hub").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm resnet18 state dict on disk, as a user copies ImageNet weights to an air-gapped machine."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def test_simplenet_imagenet_backbone_fails_fast_offline(no_network: None) -> None:
    start = time.monotonic()
    with pytest.raises(BackboneWeightsError, match=r"'resnet18'.*unreachable.*backbone_weights=.*pre_trained=False"):
        SimpleNet(backbone="resnet18", pre_trained=True, image_size=32)
    assert time.monotonic() - start < FAST_S


def test_simplenet_local_backbone_file_offline(no_network: None, resnet18_file: tuple) -> None:
    path, state = resnet18_file
    model = SimpleNet(backbone="resnet18", backbone_weights=str(path), image_size=32)
    loaded = model.model.feature_extractor.state_dict()
    assert loaded and all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_distill_imagenet_teacher_fails_fast_offline(no_network: None, tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "data")
    model = DistillClassifier(mode="distill", pre_trained=True, image_size=32)
    start = time.monotonic()
    with pytest.raises(BackboneWeightsError, match=r"teacher.*unreachable.*teacher_weights"):
        engine(tmp_path / "run").fit(model, datamodule=datamodule(data))
    assert time.monotonic() - start < FAST_S
    assert model.global_step == 0


class TeacherProbe(Callback):
    """The teacher's backbone weights as fit starts (the teacher is dropped when fit ends)."""

    state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer
        self.state = {k: v.clone() for k, v in pl_module.teacher.backbone.state_dict().items()}


def test_distill_local_teacher_file_trains_offline(no_network: None, resnet18_file: tuple, tmp_path: Path) -> None:
    path, state = resnet18_file
    data = tiny_data(tmp_path / "data")
    model = DistillClassifier(mode="distill", teacher_weights=str(path), image_size=32)
    probe = TeacherProbe()
    engine(tmp_path / "run", callbacks=[probe]).fit(model, datamodule=datamodule(data))
    assert model.model.is_fitted
    assert probe.state and all(torch.equal(value, state[key]) for key, value in probe.state.items())


def test_unet_ae_needs_no_network(no_network: None, tmp_path: Path) -> None:
    """UNetAE has no pretrained weights: fit and test run with every connection refused."""
    data = tiny_data(tmp_path / "data")
    model = make_model("unet_ae")
    fitted = engine(tmp_path / "run")
    fitted.fit(model, datamodule=datamodule(data))
    assert "image_AUROC" in fitted.test(model, datamodule=datamodule(data), verbose=False)[0]
