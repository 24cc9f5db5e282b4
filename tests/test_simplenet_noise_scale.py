"""SimpleNet's noise relative to the feature scale, backbone-dependent defaults, and the 'learns nothing' warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.models.simplenet.feature_noise import AnomalyFeatureGenerator
from anomalib_simplenet.models.simplenet.feature_scale import FeatureMoments, scale_from_moments
from anomalib_simplenet.models.simplenet.noise_scale import noise_warning
from anomalib_simplenet.models.simplenet.torch_model import SimpleNetModel

from .conftest import TINY_SIMPLENET, mvtec_datamodule


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
    datamodule = mvtec_datamodule(synthetic_root, "synthetic")
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                    accelerator="cpu")  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    metrics = engine.trainer.callback_metrics
    assert (f"First epoch: p_normal {float(metrics['p_normal_epoch']):.3f}, "
            f"p_noised {float(metrics['p_noised_epoch']):.3f}.") in caplog.text
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


@pytest.mark.parametrize(("fractions", "expected"), [((0.02, 0.99), "noise_std"), ((0.9, 0.95), None)])
def test_learns_nothing_warning(fractions: tuple[float, float], expected: str | None) -> None:
    message = noise_warning(*fractions, AnomalyFeatureGenerator(noise_std=0.015))
    assert message is None if expected is None else expected in message
    relative = noise_warning(0.02, 0.99, AnomalyFeatureGenerator(relative_noise_std=0.2))
    assert "relative_noise_std" in relative
