"""SimpleNet's noise relative to the feature scale, backbone-dependent defaults, and the 'learns nothing' warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.backbone import RANDOM_WEIGHTS
from anomalib_simplenet.models.simplenet.feature_noise import DEFAULT_RELATIVE_NOISE_STD, AnomalyFeatureGenerator
from anomalib_simplenet.models.simplenet.feature_scale import FeatureMoments, scale_from_moments
from anomalib_simplenet.models.simplenet.noise_scale import LearnsNothingCheck
from anomalib_simplenet.models.simplenet.torch_model import SimpleNetModel
from anomalib_simplenet.lab import data as lab_data

from .conftest import TINY_SIMPLENET, load_benchmark


def test_feature_scale_is_rms_of_per_dimension_std_and_sums_over_shards() -> None:
    torch.manual_seed(0)
    stds = torch.tensor([1.0, 2.0, 3.0, 4.0])
    features = torch.randn(16, 4, 8, 8) * stds[None, :, None, None] + 5.0  # offsets must not count
    whole = FeatureMoments.of(features)
    assert float(whole.scale()) == pytest.approx(float(stds.square().mean().sqrt()), rel=0.03)
    # Shards (as ranks of a distributed run would hold them) summed, then reduced once: the same number.
    first, second = FeatureMoments.of(features[:5]), FeatureMoments.of(features[5:])
    summed = scale_from_moments(*(a + b for a, b in zip(first.totals(), second.totals(), strict=True)))
    torch.testing.assert_close(summed, whole.scale())
    assert whole.images == 16 and float(whole.totals()[2]) == 16 * 64


def test_noise_follows_the_feature_scale() -> None:
    """Features 10× larger get 10× larger noise; an explicit absolute noise_std ignores the scale."""
    torch.manual_seed(0)
    features = torch.randn(8, 16, 6, 6)
    sigmas = []
    for factor in (1.0, 10.0):
        noise = AnomalyFeatureGenerator(relative_noise_std=0.2)
        noise.set_feature_scale(FeatureMoments.of(features * factor).scale())
        sigmas.append(float(noise(torch.zeros(64, 16, 8, 8)).std()))
    assert sigmas[1] / sigmas[0] == pytest.approx(10.0, rel=0.03)
    assert sigmas[0] == pytest.approx(0.2 * float(FeatureMoments.of(features).scale()), rel=0.03)
    absolute = AnomalyFeatureGenerator(noise_std=0.015)
    absolute.set_feature_scale(100.0)
    assert float(absolute(torch.zeros(64, 16, 8, 8)).std()) == pytest.approx(0.015, rel=0.03)
    with pytest.raises(RuntimeError, match="training features. scale"):
        AnomalyFeatureGenerator().sigma()  # not measured yet
    with pytest.raises(ValueError, match="feature scale"):
        AnomalyFeatureGenerator().set_feature_scale(0.0)


def test_defaults_follow_the_backbone() -> None:
    """Stride-8/16 stages, min(1536, Σ channels) features and a min(1024, D) discriminator: lite0 152-d with 152
    hidden units, wide_resnet50_2 the official 1536-d with 1024."""
    lite = SimpleNetModel(backbone="efficientnet_lite0", pre_trained=False)
    assert list(lite.feature_extractor.feature_info.module_name()) == ["blocks.2", "blocks.4"]
    assert lite.aggregator.out_channels == 152 and lite.adapter[0].in_channels == 152
    assert lite.discriminator[0].out_channels == 152
    wide = SimpleNetModel(backbone="wide_resnet50_2", pre_trained=False, noise_std=0.015)
    assert list(wide.feature_extractor.feature_info.module_name()) == ["layer2", "layer3"]
    assert wide.aggregator.out_channels == 1536 and wide.aggregator.fused
    assert wide.discriminator[0].out_channels == 1024
    with pytest.raises(ValueError, match="discriminator_hidden"):
        SimpleNetModel(backbone="efficientnet_lite0", pre_trained=False, discriminator_hidden=0)
    assert wide.noise_generator.sigma() == 0.015 and not wide.noise_generator.relative
    assert lite.noise_generator.relative


def test_fit_measures_the_scale_on_training_features_and_saves_it(synthetic_root: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The scale is that of all training images' features (the cache's first pass) and is in the checkpoint; the
    first epoch's p_normal / p_noised (what the learns-nothing check reads) are logged."""
    caplog.set_level(logging.INFO, logger="anomalib_simplenet.models.simplenet.lightning_model")
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET)
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                    accelerator="cpu")  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    metrics = engine.trainer.callback_metrics
    assert (f"First epoch: p_normal {float(metrics['p_normal_epoch']):.3f}, "
            f"p_noised {float(metrics['p_noised_epoch']):.3f}, loss {float(metrics['train_loss_epoch']):.3f}.") in caplog.text
    moments = FeatureMoments()
    model.eval()
    for batch in datamodule.train_dataloader():
        moments.update(model.model.extract_features(model.pre_processor.transform(batch.image)))
    scale = model.model.noise_generator.feature_scale
    assert moments.images == 16
    torch.testing.assert_close(scale, moments.scale(), rtol=1e-4, atol=0)
    checkpoint = torch.load(engine.trainer.checkpoint_callback.best_model_path, weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["model.noise_generator.feature_scale"], scale)
    # One backbone pass per training image: the scale pass filled the cache the epoch then read.
    assert model.training_features.computed_images == 16


def _absolute_check() -> LearnsNothingCheck:
    return LearnsNothingCheck(AnomalyFeatureGenerator(noise_std=0.015), margin=0.5)


def test_learns_nothing_one_sided_after_the_first_epoch() -> None:
    assert "noise_std=0.015" in _absolute_check().after_epoch(0, p_normal=0.02, p_noised=0.99, train_loss=0.6)
    assert _absolute_check().after_epoch(0, p_normal=0.9, p_noised=0.95, train_loss=0.1) is None
    relative = LearnsNothingCheck(AnomalyFeatureGenerator(relative_noise_std=0.2), margin=0.5)
    assert "raise relative_noise_std" in relative.after_epoch(0, p_normal=0.99, p_noised=0.01, train_loss=0.6)


def test_learns_nothing_needs_the_loss_flat_at_its_ceiling_twice() -> None:
    """Both fractions low with the loss at 2 × margin: warned on the second such epoch (or validation), once; a
    loss passing through the ceiling on its way down (a healthy start) is not warned about."""
    check = _absolute_check()
    assert check.after_epoch(0, 0.08, 0.09, train_loss=1.15, val_loss=1.15) is None  # untrained: above it
    assert check.after_epoch(1, 0.08, 0.09, train_loss=1.004, val_loss=None) is None  # first time at it
    message = check.after_epoch(2, 0.08, 0.09, train_loss=1.002)
    assert "training loss 1.002" in message and "noise_std=0.015 (absolute)" in message
    assert check.after_epoch(3, 0.08, 0.09, train_loss=1.001, val_loss=1.0) is None  # once per fit
    validation = _absolute_check()
    assert validation.after_epoch(0, 0.3, 0.3, train_loss=0.9, val_loss=1.0) is None
    assert validation.after_epoch(1, 0.3, 0.3, train_loss=0.8) is None  # no validation this epoch
    assert "validation loss 1.000" in validation.after_epoch(2, 0.3, 0.3, train_loss=0.8, val_loss=1.0)
    healthy = _absolute_check()
    for epoch, loss in enumerate((1.13, 1.04, 0.99, 0.94, 0.9)):
        assert healthy.after_epoch(epoch, 0.1, 0.17, train_loss=loss, val_loss=loss) is None
    learning = _absolute_check()  # at 1.0 but most locations past the margin: a head that separates
    assert learning.after_epoch(0, 0.7, 0.8, 1.0, 1.0) is None and learning.after_epoch(1, 0.7, 0.8, 1.0) is None


@pytest.mark.slow
@pytest.mark.parametrize(("relative_noise_std", "warned"), [(0.005, True), (0.4, False)])
def test_tiny_noise_on_real_features_warns_and_names_the_setting(
    relative_noise_std: float, warned: bool, magnetic_tile_subset: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Relative σ 0.005 on the packaged ImageNet lite0 features (about the official absolute 0.015 on them) is the
    learns-nothing case: both fractions past the margin fall towards 0 and the loss settles at its ceiling 1.0;
    the warning names ``relative_noise_std``. The default 0.4 gets no warning on the same data.
    Measured (24 evenly spaced magnetic_tile training images, 128 px, batches of 2, 8 epochs): σ 0.005 — training
    loss 1.143, 1.057, 1.033, 1.019, 1.013, 1.012, 1.007, 1.007 with p_normal/p_noised 0.18/0.22 → 0.03/0.03;
    σ 0.4 — 1.158 … 0.829."""
    caplog.set_level(logging.INFO, logger="anomalib_simplenet.models.simplenet.lightning_model")
    torch.manual_seed(0)
    model = SimpleNet(backbone="efficientnet_lite0", pre_trained=True, image_size=128,
                      relative_noise_std=relative_noise_std, visualizer=False)  # fmt: skip
    datamodule = lab_data.datamodule(magnetic_tile_subset, "magnetic_tile", batch_size=2, eval_batch_size=8)
    engine = Engine(max_epochs=8, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                    accelerator="cpu")  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    metrics = engine.trainer.callback_metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if not warned:
        assert float(metrics["train_loss_epoch"]) < 0.95 and not warnings
        return
    assert max(float(metrics["p_normal_epoch"]), float(metrics["p_noised_epoch"])) < 0.1  # not a one-sided case
    assert abs(float(metrics["train_loss_epoch"]) - 1.0) < 0.01
    assert len(warnings) == 1 and "relative_noise_std=0.005" in warnings[0] and "raise relative_noise_std" in warnings[0]


@pytest.mark.slow
def test_sweep_records_validation_curves_per_setting_and_untrained_references(synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    """``benchmarks/simplenet_sweep.py``: one run per setting (here σ 0.4 scored without and with the location
    Gaussian), one validation row per epoch, the references, and the tables."""
    runs = load_benchmark("simplenet_sweep").main([
        "--categories", "synthetic", "--data-root", str(synthetic_root), "--epochs", "2", "--image-size", "64",
        "--bank", "100", "--relative-noise", "0.4", "--output", str(tmp_path),
    ])  # fmt: skip
    assert [(r["relative_noise_std"], r["location_gaussian"]) for r in runs] == [(0.4, False), (0.4, True)]
    for run in runs:
        assert [row["epoch"] for row in run["rows"]] == [1, 2] and run["hidden"] > 0
        assert all(0.0 <= row["image_auroc"] <= 1.0 and row["val_loss"] > 0 for row in run["rows"])
    # Validation loss does not depend on how the maps are scored: the same training, the same loss.
    assert [row["val_loss"] for row in runs[0]["rows"]] == [row["val_loss"] for row in runs[1]["rows"]]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(runs))
    assert len(saved["references"]["synthetic"]) == 3
    table = (tmp_path / "sweep.md").read_text()
    assert "mean image AUROC (1 categories)" in table and "nearest of 100 training locations" in table


def test_sweep_feature_scale_mode_reports_the_scale_of_the_first_training_images(
    synthetic_root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``benchmarks/simplenet_sweep.py --feature-scale``: one row per backbone with its layers, feature size, the
    scale of the first ``--images`` training images' features, the default σ and the official σ against it."""
    load_benchmark("simplenet_sweep").main(["--feature-scale", "resnet18", "--categories", "synthetic",
                                            "--data-root", str(synthetic_root), "--images", "3", "--image-size", "64"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet18 |"))
    _, weights, layers, dimension, scale, sigma, official = (cell.strip() for cell in row.strip("|").split("|"))
    assert (weights, layers, dimension) == (RANDOM_WEIGHTS, "layer2, layer3", "384")

    torch.manual_seed(0)
    model = SimpleNet(backbone="resnet18", pre_trained=False, image_size=64)
    files = sorted((synthetic_root / "synthetic" / "train" / "good").glob("*"))[:3]
    images = torch.cat([model.pre_processor.transform(read_image(f, as_tensor=True)[None]) for f in files])
    with torch.no_grad():
        expected = float(FeatureMoments.of(model.model.eval().extract_features(images)).scale())
    assert float(scale) == pytest.approx(expected, rel=1e-3)
    assert float(sigma) == pytest.approx(DEFAULT_RELATIVE_NOISE_STD * expected, rel=1e-3)
    assert official == f"1/{expected / 0.015:.0f}"
