"""Checkpoints load under ``weights_only=True``; another model's checkpoint or other architecture arguments give
a clear error naming the class or the argument."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.utils.serialization import anomalib_safe_globals

from anomalib_simplenet.reliability.checkpoint_guard import IDENTITY_KEY
from anomalib_simplenet.reliability.guards import CheckpointMismatchError

from .reliability_support import (
    CLASSES,
    checkpoint_path,
    datamodule,
    engine,
    make_model,
    model_names,
    tiny_data,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("checkpoint_data"))


@pytest.fixture(scope="module")
def checkpoints(data: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Per model (lazily): a checkpoint after one epoch."""
    paths: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in paths:
            torch.manual_seed(0)
            fitted = engine(tmp_path_factory.mktemp(f"{name}_ckpt"))
            fitted.fit(make_model(name), datamodule=datamodule(data))
            paths[name] = checkpoint_path(fitted)
        return paths[name]

    return get


@pytest.mark.parametrize("name", model_names())
def test_checkpoint_is_plain_data_and_reloads_with_weights_only(name: str, checkpoints: object) -> None:
    path = checkpoints(name)
    with anomalib_safe_globals():  # anomalib's allow-list only: no arbitrary pickle
        raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw[IDENTITY_KEY]["class"] == CLASSES[name].__name__
    assert "rng" in raw["callbacks"]["TrainingGuard"]
    reloaded = CLASSES[name].load_from_checkpoint(path)  # anomalib's path: weights_only=True
    for key, value in raw["state_dict"].items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, equal_nan=True, msg=key)


PAIRS = [("unet_ae", "distill_classifier"), ("distill_classifier", "unet_ae"), ("simplenet", "unet_ae"),
         ("unet_ae", "simplenet")]


@pytest.mark.parametrize(
    ("source", "target"),
    [pytest.param(s, t, id=f"{s}-as-{t}") for s, t in PAIRS],
)
def test_checkpoint_of_another_model_class_is_a_clear_error(source: str, target: str, checkpoints: object) -> None:
    source_cls, target_cls = CLASSES[source], CLASSES[target]
    expected = rf"holds a {source_cls.__name__} model.*not a {target_cls.__name__}"
    with pytest.raises(CheckpointMismatchError, match=expected):
        target_cls.load_from_checkpoint(checkpoints(source))


def test_engine_ckpt_path_of_another_class_names_the_file(checkpoints: object, data: Path, tmp_path: Path) -> None:
    path = checkpoints("distill_classifier")
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {path} holds a DistillClassifier model"):
        engine(tmp_path).test(make_model("unet_ae"), datamodule=datamodule(data), ckpt_path=path)


OVERRIDES = {
    "simplenet": {"backbone": "resnet34"},
    "unet_ae": {"depth": 3},
    "distill_classifier": {"image_size": 48},  # the per-location Gaussians are sized for the image
}


@pytest.mark.parametrize("name", model_names())
def test_other_architecture_arguments_name_the_argument(
    name: str, checkpoints: object, data: Path, tmp_path: Path,
) -> None:
    (argument, value), = OVERRIDES[name].items()
    with pytest.raises(CheckpointMismatchError, match=rf"{argument}: checkpoint .*, this model {value!r}"):
        CLASSES[name].load_from_checkpoint(checkpoints(name), **OVERRIDES[name])
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {checkpoints(name)} does not fit.*{argument}"):
        other = make_model(name, **OVERRIDES[name])
        engine(tmp_path).test(other, datamodule=datamodule(data), ckpt_path=checkpoints(name))
