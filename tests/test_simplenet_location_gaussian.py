"""SimpleNet's per-location Gaussian ensemble: what it fits, that position reaches the score, save/load, export."""

from __future__ import annotations

import pytest
import torch

from anomalib_simplenet.components.mahalanobis import MahalanobisDistance
from anomalib_simplenet.deploy import FP32_CPU_CONFIG
from anomalib_simplenet.models.simplenet.location_gaussian import LocationGaussianEnsemble
from anomalib_simplenet.models.simplenet.torch_model import SimpleNetModel

SMALL = {"backbone": "resnet18", "pre_trained": False, "pretrain_embed_dim": 16, "target_embed_dim": 16,
         "discriminator_hidden": 8, "location_gaussian": True}


def located_features(count: int, seed: int = 0) -> torch.Tensor:
    """Features ``(count, 4, 3, 3)`` whose mean depends on the location: location ``g`` is centred on ``g``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.arange(9.0).reshape(1, 1, 3, 3).expand(1, 4, 3, 3)
    return centres + 0.1 * torch.randn(count, 4, 3, 3, generator=generator)


def test_distance_is_each_locations_own_mahalanobis_distance() -> None:
    train, queries = located_features(200), located_features(5, seed=1)
    ensemble = LocationGaussianEnsemble(4).fit(train.split(64))
    flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  (N, G, D)
    reference = MahalanobisDistance(4, groups=9, estimator="ridge").fit(flat(train))(flat(queries))  # all at once
    torch.testing.assert_close(ensemble.distance(queries).flatten(1), reference, rtol=1e-4, atol=1e-4)


def in_memory_fit(features: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and whitening of a fit holding all features ``(N, D, h, w)`` at once."""
    samples = features.flatten(2).transpose(1, 2).double()  # (N, G, D)
    fitted = MahalanobisDistance(samples.shape[2], groups=samples.shape[1], estimator=estimator).fit(samples)
    return fitted.mean, torch.linalg.cholesky(fitted.precision.double()).float()


def refitted_leave_one_out_stats(features: torch.Tensor, estimator: str) -> torch.Tensor:
    """Mean and std of every image's distances to Gaussians refitted without it (``N`` fits)."""
    samples = features.flatten(2).transpose(1, 2).double()  # (N, G, D)
    distances = []
    for left_out in range(len(samples)):
        rest = torch.cat([samples[:left_out], samples[left_out + 1 :]])
        fitted = MahalanobisDistance(samples.shape[2], groups=samples.shape[1], estimator=estimator).fit(rest)
        distances.append(fitted(samples[left_out : left_out + 1].float()))
    distances = torch.cat(distances)
    return torch.stack([distances.mean(), distances.std()]).float()


def correlated_features(count: int) -> torch.Tensor:
    """Features ``(count, 6, 4, 5)`` far from zero (offset 50) and correlated: the running sums' precision matters."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator)
    return 50.0 + torch.einsum("nchw,dc->ndhw", torch.randn(count, 6, 4, 5, generator=generator), mixing)


@pytest.mark.parametrize(("batch_size", "estimator"), [(7, "ridge"), (64, "ridge"), (1000, "ridge"),
                                                      (7, "ledoit_wolf"), (1000, "ledoit_wolf")])
def test_streamed_fit_equals_the_fit_on_all_features_at_once(batch_size: int, estimator: str) -> None:
    """Running sums give the in-memory fit's Gaussians whatever the batches and the covariance estimator; the batches
    may come as a one-shot iterator (the second pass needs them again)."""
    features = correlated_features(101)
    mean, whitening = in_memory_fit(features, estimator)
    ensemble = LocationGaussianEnsemble(6, estimator).fit(iter(features.split(batch_size)), count=len(features))
    torch.testing.assert_close(ensemble.mean, mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(ensemble.whitening, whitening, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="told 102 training images, got 101"):
        LocationGaussianEnsemble(6).fit(features.split(batch_size), count=102)


@pytest.mark.parametrize("estimator", ["ridge", "ledoit_wolf"])
def test_spread_is_that_of_images_the_gaussians_did_not_see(estimator: str) -> None:
    """With 8 images of 6 channels in-sample distances are far smaller than those of new images: the spread kept is
    the leave-one-out one (the Sherman–Morrison shortcut against 8 refits, which also re-estimate the ridge or the
    shrinkage: measured within 3 % in the mean, 16 % in the std), not the in-sample one (1.4–2.6× smaller)."""
    features = correlated_features(8)
    ensemble = LocationGaussianEnsemble(6, estimator).fit(features.split(5))
    refitted = refitted_leave_one_out_stats(features, estimator)
    assert float(ensemble.gaussian_stats[0]) == pytest.approx(float(refitted[0]), rel=0.06)
    assert float(ensemble.gaussian_stats[1]) == pytest.approx(float(refitted[1]), rel=0.25)
    assert ensemble.gaussian_stats[0] > 1.3 * ensemble.distance(features).mean()


def test_position_reaches_the_score() -> None:
    """A feature that is normal at one location is anomalous at another: swapping two locations raises their score."""
    train = located_features(200)
    ensemble = LocationGaussianEnsemble(4).fit([train])
    query = located_features(1, seed=2)
    swapped = query.clone()
    swapped[..., 0, 0], swapped[..., 2, 2] = query[..., 2, 2], query[..., 0, 0]
    zero = torch.zeros(1, 1, 3, 3)  # the same discriminator score everywhere: only the Gaussian term differs
    normal, moved = ensemble(query, zero), ensemble(swapped, zero)
    assert moved[0, 0, 0, 0] > normal.max() + 10 and moved[0, 0, 2, 2] > normal.max() + 10
    torch.testing.assert_close(moved[0, 0, 1], normal[0, 0, 1])  # untouched locations keep their scores


def test_terms_are_standardised_on_normal_training_features() -> None:
    train = located_features(300)
    ensemble = LocationGaussianEnsemble(4).fit([train])
    for _ in range(200):  # running statistics of the discriminator's normal scores converge to their mean / std
        ensemble.track(3.0 + 2.0 * torch.randn(4096, 1, 1, 1))
    assert ensemble.score_norm.running_mean.item() == pytest.approx(3.0, abs=0.1)
    assert ensemble.score_norm.running_var.sqrt().item() == pytest.approx(2.0, rel=0.05)
    scores = 3.0 + 2.0 * torch.randn(300, 1, 3, 3)
    combined = ensemble(located_features(300, seed=3), scores)  # new normal images
    assert combined.mean() == pytest.approx(0.0, abs=0.15)  # both terms ~ zero mean on normal features
    assert combined.std() == pytest.approx(2**0.5, rel=0.2)  # and unit spread each (nearly independent)


def test_errors_name_the_problem() -> None:
    ensemble = LocationGaussianEnsemble(4)
    with pytest.raises(RuntimeError, match="not fitted"):
        ensemble.distance(located_features(1))
    with pytest.raises(ValueError, match="channels"):
        ensemble.fit([torch.randn(10, 5, 3, 3)])
    with pytest.raises(ValueError, match="at least 3"):
        ensemble.fit([located_features(2)])
    ensemble.fit([located_features(50)])
    with pytest.raises(ValueError, match="grid"):
        ensemble.distance(torch.randn(1, 4, 4, 4))


def test_model_scores_with_the_ensemble_and_reloads_it() -> None:
    torch.manual_seed(0)
    model = SimpleNetModel(**SMALL).train()
    images = torch.randn(4, 3, 64, 64)
    features = model.extract_features(images)
    model.location_gaussian.fit([features])
    normal, _ = model.discriminate(features)
    # One step of the running mean from 0 towards the batch's mean anomaly score, with BatchNorm's momentum.
    torch.testing.assert_close(model.location_gaussian.score_norm.running_mean, 0.1 * -normal.mean().reshape(1))
    model.eval()
    plain = -model._post_discriminator(torch.nn.functional.conv2d(features, *model._fused_linear()[:2]))
    expected = model.location_gaussian(features, plain)
    torch.testing.assert_close(model.score_map(features), expected)

    reloaded = SimpleNetModel(**SMALL).eval()
    reloaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(reloaded.score_map(features), model.score_map(features))
    assert SimpleNetModel(**{**SMALL, "location_gaussian": False}).location_gaussian is None


def test_checkpoint_without_gaussians_names_the_argument_that_loads_it(caplog: pytest.LogCaptureFixture) -> None:
    """A discriminator-only checkpoint loads into a model built with location_gaussian=False; loading it into a
    default one fails on the missing keys, after a warning that names the argument."""
    plain = SimpleNetModel(**{**SMALL, "location_gaussian": False}).state_dict()
    with pytest.raises(RuntimeError, match="location_gaussian.mean"):
        SimpleNetModel(**SMALL).load_state_dict(plain)
    assert "build the model with location_gaussian=False" in caplog.text
    caplog.clear()
    SimpleNetModel(**{**SMALL, "location_gaussian": False}).load_state_dict(plain)
    reloaded = SimpleNetModel(**SMALL)
    reloaded.load_state_dict(reloaded.state_dict())
    assert "location_gaussian=False" not in caplog.text, "no warning for a checkpoint that has them"


@pytest.mark.slow
def test_ensemble_exports_to_openvino() -> None:
    ov = pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = SimpleNetModel(**SMALL).train()
    images = torch.randn(4, 3, 64, 64)
    model.location_gaussian.fit([model.extract_features(images)])
    model.discriminate(model.extract_features(images))
    model.eval()

    class MapOnly(torch.nn.Module):  # the inference path, as a traced export sees it
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images).anomaly_map

    with torch.no_grad():
        compiled = ov.compile_model(ov.convert_model(MapOnly(), example_input=images[:1]), "CPU", FP32_CPU_CONFIG)
    exported = torch.from_numpy(compiled(images[1:2].numpy())[0])
    torch.testing.assert_close(exported, model(images[1:2]).anomaly_map, rtol=1e-3, atol=1e-3)


def test_default_keeps_all_channels_for_short_features_and_a_subset_for_wide_ones() -> None:
    """``None`` decides by the feature length: D×D matrices per location are cheap at D = 152, gigabytes at 1056+,
    so wide features keep Gaussians on a seeded random subset of channels (Padim's way); ``True`` keeps them all."""
    from anomalib_simplenet.models.simplenet.torch_model import GAUSSIAN_SUBSET_CHANNELS, MAX_LOCATION_GAUSSIAN_DIM

    short = {**SMALL, "location_gaussian": None, "target_embed_dim": MAX_LOCATION_GAUSSIAN_DIM}
    wide = {**short, "pretrain_embed_dim": 384, "target_embed_dim": MAX_LOCATION_GAUSSIAN_DIM + 1}
    assert SimpleNetModel(**short).location_gaussian.channels is None
    subset = SimpleNetModel(**wide).location_gaussian
    assert subset.gaussian_dim == GAUSSIAN_SUBSET_CHANNELS == len(subset.channels)
    assert SimpleNetModel(**{**wide, "location_gaussian": True}).location_gaussian.channels is None
    assert SimpleNetModel(**{**wide, "location_gaussian": False}).location_gaussian is None


def test_channel_subset_is_saved_and_exported_with_the_model() -> None:
    """The subset is a buffer: a reloaded model scores the same, and features of the wrong width are refused."""
    torch.manual_seed(0)
    model = SimpleNetModel(**SMALL).train()
    model.location_gaussian = LocationGaussianEnsemble(16, channels=5, seed=3)
    features = model.extract_features(torch.randn(6, 3, 64, 64))
    model.location_gaussian.fit([features])
    model.eval()
    reloaded = SimpleNetModel(**SMALL).eval()
    reloaded.location_gaussian = LocationGaussianEnsemble(16, channels=5, seed=0)  # another subset, overwritten
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded.location_gaussian.channels, model.location_gaussian.channels)
    torch.testing.assert_close(reloaded.score_map(features), model.score_map(features))
    with pytest.raises(ValueError, match="built for 16 channels"):
        model.location_gaussian.distance(features[:, :6])


def test_a_subset_fit_on_the_kept_channels_alone_equals_the_fit_on_all() -> None:
    """SimpleNet's fit collects only the subset's channels (memory); the Gaussians are the same."""
    features = correlated_features(30).repeat(1, 3, 1, 1)  # (30, 18, 4, 5)
    whole = LocationGaussianEnsemble(18, channels=6, seed=1).fit(features.split(7))
    kept = LocationGaussianEnsemble(18, channels=6, seed=1)
    kept.fit([kept.kept_channels(batch) for batch in features.split(7)])
    for name in ("mean", "whitening", "gaussian_stats"):
        torch.testing.assert_close(getattr(kept, name), getattr(whole, name))
    torch.testing.assert_close(kept.distance(features), whole.distance(features))
