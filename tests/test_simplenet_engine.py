"""SimpleNet end to end: Engine fit/test/predict, checkpoint reload, the anomalib CLI, real data."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.lab import data as lab_data

from .conftest import TINY_SIMPLENET, anomalib_command

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score")


def _engine(root_dir: Path, epochs: int = 2) -> Engine:
    return Engine(max_epochs=epochs, default_root_dir=root_dir, accelerator="cpu", logger=False, enable_progress_bar=False)


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SimpleNet, Engine, object, float]:
    torch.manual_seed(0)
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    model = SimpleNet(**TINY_SIMPLENET)
    engine = _engine(tmp_path_factory.mktemp("simplenet_run"))
    engine.fit(model, datamodule=datamodule)
    return model, engine, datamodule, float(engine.trainer.callback_metrics["train_loss"])


def test_fit_learns_and_test_reports_metrics(trained: tuple) -> None:
    model, engine, datamodule, train_loss = trained
    results = engine.test(model, datamodule=datamodule)[0]
    assert set(METRICS) <= set(results)
    assert all(0.0 <= results[m] <= 1.0 for m in METRICS)
    assert math.isfinite(train_loss)


def test_training_never_touches_test_images(trained: tuple) -> None:
    _, _, datamodule, _ = trained
    train_paths = set(datamodule.train_data.samples.image_path)
    val_paths = set(datamodule.val_data.samples.image_path)
    test_paths = set(datamodule.test_data.samples.image_path)
    assert not train_paths & test_paths
    assert not val_paths & test_paths


def test_predict_and_checkpoint_reload_give_same_scores(trained: tuple, synthetic_root: Path) -> None:
    model, engine, _, _ = trained
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path)
    assert checkpoint.is_file()
    images = sorted((synthetic_root / "synthetic" / "test" / "blob").glob("*.png"))[:3]
    predictions = engine.predict(model, data_path=images[0].parent, return_predictions=True)
    assert predictions and predictions[0].pred_score is not None and predictions[0].anomaly_map is not None

    reloaded = SimpleNet.load_from_checkpoint(checkpoint)  # anomalib loads with weights_only=True
    assert reloaded.hparams.backbone == "resnet18"
    model.eval()
    reloaded.eval()
    batch = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(reloaded(batch).pred_score, model.to("cpu")(batch).pred_score)


def test_wide_features_fit_gaussians_on_a_channel_subset(synthetic_root: Path, tmp_path: Path) -> None:
    """Features wider than 256 channels: the fit collects and models the subset's channels only, and a reloaded
    checkpoint scores the same."""
    torch.manual_seed(0)
    model = SimpleNet(**{**TINY_SIMPLENET, "pretrain_embed_dim": 300, "target_embed_dim": 300})
    engine = _engine(tmp_path, epochs=1)
    engine.fit(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"))
    gaussian = model.model.location_gaussian
    assert gaussian.fitted and gaussian.channels is not None and gaussian.whitening.shape[1:] == (152, 152)
    callback = engine.trainer.checkpoint_callback
    reloaded = SimpleNet.load_from_checkpoint(callback.best_model_path or callback.last_model_path).eval()
    batch = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(reloaded(batch).anomaly_map, model.eval().to("cpu")(batch).anomaly_map)


def test_pre_processor_resizes_to_image_size() -> None:
    model = SimpleNet(backbone="resnet18", pre_trained=False, image_size=(96, 80))
    assert model.input_size == (96, 80)
    with pytest.raises(ValueError, match="image_size"):
        SimpleNet(backbone="resnet18", pre_trained=False, image_size=(0, 80))


@pytest.mark.slow
def test_anomalib_cli_train(synthetic_root: Path, tmp_path: Path) -> None:
    command = [
        anomalib_command(), "train", "--model", "SimpleNet",
        "--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.image_size", "64",
        "--model.pretrain_embed_dim", "256", "--model.target_embed_dim", "256", "--model.discriminator_hidden", "128",
        "--data", "MVTecAD", "--data.root", str(synthetic_root), "--data.category", "synthetic",
        "--data.num_workers", "0", "--data.train_batch_size", "8", "--data.eval_batch_size", "8",
        "--data.val_split_mode", "from_test",
        "--trainer.max_epochs", "1", "--trainer.logger", "false", "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "image_AUROC" in result.stdout + result.stderr
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {tmp_path}"
    hparams = torch.load(checkpoints[0], map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["backbone"] == "resnet18" and hparams["image_size"] == 64


@pytest.mark.slow
def test_real_data_magnetic_tile(magnetic_tile_subset: Path, tmp_path: Path) -> None:
    """Grayscale, variable-size real images train and test as they are."""
    torch.manual_seed(0)
    datamodule = lab_data.datamodule(magnetic_tile_subset, "magnetic_tile")
    model = SimpleNet(**{**TINY_SIMPLENET, "image_size": 96})
    engine = _engine(tmp_path, epochs=2)
    engine.fit(model, datamodule=datamodule)
    results = engine.test(model, datamodule=datamodule)[0]
    assert all(math.isfinite(results[m]) and 0.0 <= results[m] <= 1.0 for m in METRICS)
    images = list((tmp_path).rglob("images/**/*.png"))
    assert images, "the visualizer should write result images into the run folder"
