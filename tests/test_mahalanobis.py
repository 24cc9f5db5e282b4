"""The shared Mahalanobis component against sklearn's Ledoit–Wolf, Padim's ridge and a direct formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from anomalib_simplenet.components import mahalanobis
from anomalib_simplenet.components.mahalanobis import RELATIVE_RIDGE, MahalanobisDistance, ledoit_wolf_covariance


def test_ledoit_wolf_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    covariance, shrinkage = ledoit_wolf_covariance(torch.from_numpy(samples)[None])
    reference = LedoitWolf().fit(samples)
    np.testing.assert_allclose(covariance[0].numpy(), reference.covariance_, rtol=1e-8, atol=1e-10)
    assert shrinkage.item() == pytest.approx(reference.shrinkage_)


def test_ridge_is_the_empirical_covariance_plus_a_scaled_identity() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6))
    groups = np.stack([samples, 3 * samples[::-1]], axis=1)  # (30, 2, 6): the second group has 9× the variance
    fitted = MahalanobisDistance(6, groups=2, eps=0.0, estimator="ridge").fit(torch.from_numpy(groups))
    empirical = [np.cov(groups[:, group], rowvar=False, bias=True) for group in range(2)]
    ridge = RELATIVE_RIDGE * (np.trace(empirical[0]) + np.trace(empirical[1])) / 12  # one ridge for all groups
    for group in range(2):
        expected = empirical[group] + ridge * np.eye(6)
        np.testing.assert_allclose(torch.linalg.inv(fitted.precision[group].double()).numpy(), expected, rtol=1e-4)


def test_ridge_keeps_the_directions_few_samples_do_not_span() -> None:
    """20 samples in 40 dimensions span 19: a step off that span by the samples' own spread is far under the ridge
    (it is measured against the ridge's small variance), and looks ordinary to Ledoit–Wolf (shrunk to isotropic)."""
    torch.manual_seed(0)
    normal = torch.randn(20, 40)
    centred = normal - normal.mean(0)
    off_span = torch.randn(40)
    off_span -= torch.linalg.lstsq(centred.T, off_span).solution @ centred  # remove its in-span part
    off_span *= centred.norm(dim=1).mean() / off_span.norm()
    in_span = centred[0]  # a training sample: as far from the mean as the step off the span
    for estimator, lowest, highest in (("ridge", 5.0, None), ("ledoit_wolf", None, 1.5)):
        fitted = MahalanobisDistance(40, estimator=estimator).fit(normal)
        ratio = float(fitted((normal.mean(0) + off_span)[None]) / fitted((normal.mean(0) + in_span)[None]))
        assert (lowest is None or ratio > lowest) and (highest is None or ratio < highest), (estimator, ratio)
    with pytest.raises(ValueError, match="estimator"):
        MahalanobisDistance(4, estimator="oas")


def test_distance_matches_formula_and_ranks_outliers() -> None:
    torch.manual_seed(0)
    normal = torch.randn(200, 5) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    distance = MahalanobisDistance(dim=5).fit(normal)
    query = torch.stack([torch.zeros(5), torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0])])
    scores = distance(query)
    delta = query.double() - normal.double().mean(0)
    precision = distance.precision[0].double()
    expected = torch.sqrt(torch.einsum("nd,de,ne->n", delta, precision, delta)).float()
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores[1] > 3 * scores[0]
    assert bool(distance.fitted)


def test_grouped_fit_is_independent_per_group() -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(50, 3, 4)
    grouped = MahalanobisDistance(dim=4, groups=3).fit(embeddings)
    single = MahalanobisDistance(dim=4).fit(embeddings[:, 1])
    query = torch.randn(6, 3, 4)
    torch.testing.assert_close(grouped(query)[:, 1], single(query[:, 1]), rtol=1e-5, atol=1e-5)


def test_fit_in_slices_of_groups_equals_one_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory bound on the fit's temporaries changes how many groups are fitted at once, not the result."""
    torch.manual_seed(0)
    embeddings = torch.randn(40, 7, 5)
    whole = MahalanobisDistance(dim=5, groups=7).fit(embeddings)
    monkeypatch.setattr(mahalanobis, "FIT_CHUNK_ELEMENTS", 40 * 5 * 3)  # slices of 3, 3 and 1 groups
    sliced = MahalanobisDistance(dim=5, groups=7).fit(embeddings)
    torch.testing.assert_close(sliced.mean, whole.mean, rtol=0, atol=0)
    torch.testing.assert_close(sliced.precision, whole.precision, rtol=1e-6, atol=1e-6)
    assert not torch.equal(whole.precision[0], whole.precision[6]), "distinct groups, or this checks nothing"


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [(torch.randn(1, 4), "at least 2"), (torch.full((5, 4), float("nan")), "NaN"), (torch.randn(5, 3), "do not match")],
)
def test_fit_rejects_bad_input(embeddings: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MahalanobisDistance(dim=4).fit(embeddings)
