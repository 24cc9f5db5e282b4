"""The SimpleNet sweep's candidate variations: a finer feature grid, a channel-subset location Gaussian, the image
score read from the smoothed map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anomalib_simplenet.models.simplenet.location_gaussian import LocationGaussianEnsemble

from .conftest import load_benchmark

sweep = load_benchmark("simplenet_sweep")


def test_finer_grid_halves_the_stride_over_the_same_span_and_interpolates_between_cells() -> None:
    """A map linear in the cells' input positions stays linear on the finer grid: each interior fine cell holds the
    value of its own position (bilinear interpolation is exact for linear maps)."""
    geometry = torch.tensor([[3.5, -1.0], [8.0, 8.0]])  # [(offset, stride), (y, x)]
    positions = [geometry[0, axis] + geometry[1, axis] * torch.arange(6.0) for axis in (0, 1)]
    linear = lambda y, x: 2.0 * y[:, None] - 0.5 * x[None, :]
    features = torch.stack([linear(*positions), -linear(*positions)])[None]  # (1, 2, 6, 6)
    fine_features, fine = sweep.finer_grid(features, geometry)
    torch.testing.assert_close(fine, torch.tensor([[1.5, -3.0], [4.0, 4.0]]))
    assert fine_features.shape == (1, 2, 12, 12)
    fine_positions = [fine[0, axis] + fine[1, axis] * torch.arange(12.0) for axis in (0, 1)]
    inside = slice(1, 11)  # the outermost fine cells lie beyond the outermost coarse ones
    expected = linear(*fine_positions)[inside, inside]
    torch.testing.assert_close(fine_features[0, 0, inside, inside], expected)
    torch.testing.assert_close(fine_features[0, 1, inside, inside], -expected)


def test_channel_subset_gaussian_equals_a_gaussian_fitted_on_those_channels() -> None:
    generator = torch.Generator().manual_seed(0)
    train, queries = torch.randn(40, 10, 3, 3, generator=generator), torch.randn(4, 10, 3, 3, generator=generator)
    subset = LocationGaussianEnsemble(10, channels=4, seed=0).fit(train.split(16))
    chosen = subset.channels
    assert len(chosen) == 4 and len(set(chosen.tolist())) == 4 and chosen.max() < 10
    assert torch.equal(chosen, LocationGaussianEnsemble(10, channels=4, seed=0).channels)  # seeded
    assert LocationGaussianEnsemble(10, channels=10).channels is None  # as many as there are: all
    reference = LocationGaussianEnsemble(4).fit(train[:, chosen].split(16))
    torch.testing.assert_close(subset.distance(queries), reference.distance(queries[:, chosen]))
    torch.testing.assert_close(subset.gaussian_stats, reference.gaussian_stats)


@pytest.mark.slow
def test_sweep_trains_on_the_finer_grid_with_a_channel_subset_gaussian(synthetic_root: Path, tmp_path: Path) -> None:
    """End to end on a subset of the training images: the runs record the variation and both image scores."""
    runs = sweep.main([
        "--categories", "synthetic", "--data-root", str(synthetic_root), "--epochs", "1", "--image-size", "64",
        "--bank", "0", "--relative-noise", "0.4", "--location-gaussian", "1", "--gaussian-channels", "8",
        "--finer-grid", "--train-images", "6", "--backbone", "resnet18", "--weights", "random",
        "--output", str(tmp_path),
    ])  # fmt: skip
    assert [(run["gaussian_channels"], run["finer_grid"]) for run in runs] == [(8, True)]
    row = runs[0]["rows"][0]
    assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["image_auroc_map"] <= 1.0
    assert len(list((tmp_path / "data" / "synthetic" / "train" / "good").iterdir())) == 6
    assert "'gaussian_channels': 8, 'gaussian_estimator': 'ridge', 'finer_grid': True" in (tmp_path / "sweep.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["finer_grid"] is True
