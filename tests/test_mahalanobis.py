"""The shared Mahalanobis component against sklearn's Ledoit–Wolf and a direct formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from anomalib_simplenet.components import mahalanobis
from anomalib_simplenet.components.mahalanobis import MahalanobisDistance, ledoit_wolf_covariance


def test_ledoit_wolf_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    covariance, shrinkage = ledoit_wolf_covariance(torch.from_numpy(samples)[None])
    reference = LedoitWolf().fit(samples)
    np.testing.assert_allclose(covariance[0].numpy(), reference.covariance_, rtol=1e-8, atol=1e-10)
    assert shrinkage.item() == pytest.approx(reference.shrinkage_)


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
