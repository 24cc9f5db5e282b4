"""DBSCAN on embeddings, without Lightning: synthetic clusters plus outliers where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.clustering import (
    DBSCANDetector,
    DegenerateInputError,
    EmbeddingProjector,
    NoveltyAssignment,
    choose_eps,
    core_distances,
    detection_metrics,
    embed_tsne,
    inspect_assignment,
)
from anomalib_simplenet.clustering.plots import plot_clusters

DIM = 12


def _blobs(rng: np.random.Generator, centres: np.ndarray, per_centre: int) -> np.ndarray:
    return np.concatenate([c + rng.normal(scale=0.5, size=(per_centre, DIM)) for c in centres])


@pytest.fixture(scope="module")
def known() -> dict[str, np.ndarray]:
    """Two normal clusters (σ = 0.5 per feature, centres 10 apart in every feature), test images: 10 from each
    cluster and 6 outliers 8 away from the midpoint in random directions (>= 9 from either centre)."""
    rng = np.random.default_rng(0)
    centres = np.array([np.zeros(DIM), np.full(DIM, 10.0)])
    outliers = rng.normal(size=(6, DIM))
    outliers = 8.0 * outliers / np.linalg.norm(outliers, axis=1, keepdims=True) + centres.mean(axis=0)
    return {
        "normal": _blobs(rng, centres, 40),
        "test": np.concatenate([_blobs(rng, centres, 10), outliers]),
        "gt": np.r_[np.zeros(20), np.ones(6)].astype(int),
        "cluster_of_test": np.r_[np.zeros(10), np.ones(10)].astype(int),
    }


def _fit(normal: np.ndarray, components: int | None = None, **kwargs) -> tuple:
    projector = EmbeddingProjector(components).fit(normal)
    return projector, DBSCANDetector(**kwargs).fit(projector.transform(normal))


def test_outliers_are_exactly_the_noise(known: dict) -> None:
    projector, detector = _fit(known["normal"], min_samples=5)
    assignment = detector.assign(projector.transform(known["test"]))
    assert detector.n_clusters_ == 2
    np.testing.assert_array_equal(assignment.anomalous, known["gt"].astype(bool))
    # Normal test images join the cluster of their own centre (cluster ids follow the normal images' order).
    clusters = assignment.labels[:20]
    assert len(set(clusters[:10])) == len(set(clusters[10:])) == 1 and clusters[0] != clusters[10]
    # Noise ⇔ the score (distance to the nearest core point) exceeds eps.
    np.testing.assert_array_equal(assignment.scores > detector.eps_, assignment.anomalous)
    metrics = detection_metrics(known["gt"], assignment)
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "auroc": 1.0}
    assert inspect_assignment(known["gt"], assignment) == []


def test_metrics_of_a_partly_wrong_decision() -> None:
    """2 TP, 1 FN, 1 FP, 4 TN: precision 2/3, recall 2/3, accuracy 6/8; AUROC from the scores' ranks."""
    gt = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    labels = np.array([-1, -1, 0, -1, 0, 0, 0, 0])
    scores = np.array([9.0, 8.0, 1.0, 7.0, 2.0, 0.5, 0.4, 0.3])  # the FN ranks below one negative (2.0)
    metrics = detection_metrics(gt, NoveltyAssignment(labels=labels, scores=scores))
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["auroc"] == pytest.approx(13 / 15)  # 15 positive-negative pairs, 2 ordered wrongly


def test_eps_rule_on_a_line() -> None:
    """Points 0..9 on a line: the 2nd-neighbour distance is 1 inside, 2 at both ends."""
    line = np.arange(10.0)[:, None]
    np.testing.assert_allclose(core_distances(line, 3), [2, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    assert choose_eps(line, 3, quantile=0.8) == 1.0  # the 8 inner points are core at eps = 1
    assert choose_eps(line, 3, quantile=0.81) == 2.0  # 9 of 10 need the end points' distance
    assert choose_eps(line, 2, quantile=0.95) == 1.0


def test_automatic_eps_makes_the_quantile_core_points(known: dict) -> None:
    """eps is the smallest radius at which at least ``eps_quantile`` of the normal images are core points."""
    for quantile in (0.5, 0.8, 0.95):
        eps = choose_eps(known["normal"], 5, quantile)
        core = DBSCAN(eps=eps, min_samples=5).fit(known["normal"]).core_sample_indices_
        assert len(core) >= quantile * len(known["normal"])
        # ... and no smaller radius would: a hair below eps drops under the quantile.
        fewer = DBSCAN(eps=eps * 0.999, min_samples=5).fit(known["normal"]).core_sample_indices_
        assert len(fewer) < quantile * len(known["normal"])
    with pytest.raises(ValueError, match="eps_quantile"):
        choose_eps(known["normal"], 5, quantile=0.0)


def test_given_eps_and_labels_match_sklearn_on_the_normal_images(known: dict) -> None:
    projector, detector = _fit(known["normal"], min_samples=4, eps=2.0)
    assert detector.eps_ == 2.0
    reference = DBSCAN(eps=2.0, min_samples=4).fit(projector.transform(known["normal"]))
    np.testing.assert_array_equal(detector.normal_labels_, reference.labels_)


def test_pca_components_and_variance_fraction(known: dict) -> None:
    assert EmbeddingProjector(3).fit(known["normal"]).n_components_ == 3
    assert EmbeddingProjector(500).fit(known["normal"]).n_components_ == DIM  # clamped to the data
    half = EmbeddingProjector(0.5).fit(known["normal"])
    assert half.explained_variance_ >= 0.5 and half.n_components_ < DIM
    assert EmbeddingProjector(None).fit(known["normal"]).explained_variance_ == pytest.approx(1.0)
    for bad in (0, 1.5, -0.1, True, "all"):
        with pytest.raises(ValueError, match="pca_components"):
            EmbeddingProjector(bad)


def test_constant_feature_does_not_blow_up() -> None:
    rng = np.random.default_rng(1)
    normal = np.c_[rng.normal(size=(30, 4)), np.ones(30)]
    projector = EmbeddingProjector(None).fit(normal)
    assert np.isfinite(projector.transform(normal)).all()


# ---------------------------------------------------------------- degenerate input: a clear message each


def test_fewer_images_than_min_samples() -> None:
    with pytest.raises(DegenerateInputError, match=r"only 3 usable normal images for min_samples=5"):
        DBSCANDetector(min_samples=5).fit(np.random.default_rng(0).normal(size=(3, 4)))


def test_every_normal_image_noise(known: dict) -> None:
    with pytest.raises(DegenerateInputError, match=r"all 80 normal images are DBSCAN noise at eps=1e-06"):
        DBSCANDetector(min_samples=5, eps=1e-6).fit(known["normal"])


def test_coinciding_embeddings() -> None:
    with pytest.raises(DegenerateInputError, match="coincide"):
        DBSCANDetector(min_samples=3).fit(np.ones((10, 4)))


def test_one_cluster_flags_nothing(known: dict) -> None:
    projector, detector = _fit(known["normal"], min_samples=5, eps=1e3)
    assignment = detector.assign(projector.transform(known["test"]))
    assert detector.n_clusters_ == 1 and not assignment.anomalous.any()
    notes = inspect_assignment(known["gt"], assignment)
    assert notes == ["no test image is noise: all 26 fell into one cluster; the decision flags nothing"]
    assert detection_metrics(known["gt"], assignment)["recall"] == 0.0


def test_all_test_images_noise(known: dict) -> None:
    projector, detector = _fit(known["normal"], min_samples=5)
    assignment = detector.assign(projector.transform(known["test"]) + 100.0)  # a domain shift
    assert assignment.anomalous.all()
    assert any(note.startswith("all 26 test images are DBSCAN noise") for note in inspect_assignment(
        known["gt"], assignment))


def test_nan_embeddings(known: dict) -> None:
    with pytest.raises(DegenerateInputError, match="finite"):
        EmbeddingProjector().fit(np.r_[known["normal"], np.full((1, DIM), np.nan)])
    projector, detector = _fit(known["normal"], min_samples=5)
    test = known["test"].copy()
    test[[0, 25], 3] = np.nan  # one normal, one outlier
    assignment = detector.assign(projector.transform(test))
    assert assignment.labels[0] == -1 and math.isnan(assignment.scores[0]) and math.isnan(assignment.scores[25])
    notes = inspect_assignment(known["gt"], assignment)
    assert notes == ["2 of 26 test embeddings contain NaN/inf: labelled noise, left out of AUROC"]
    metrics = detection_metrics(known["gt"], assignment)
    assert metrics["auroc"] == 1.0 and metrics["precision"] == pytest.approx(6 / 7)


def test_one_ground_truth_class_gives_nan_auroc(known: dict) -> None:
    projector, detector = _fit(known["normal"], min_samples=5)
    assignment = detector.assign(projector.transform(known["test"][:20]))
    assert math.isnan(detection_metrics(np.zeros(20), assignment)["auroc"])
    assert "AUROC is undefined" in inspect_assignment(np.zeros(20), assignment)[-1]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="min_samples must be >= 2"):
        DBSCANDetector(min_samples=1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        DBSCANDetector(eps=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        DBSCANPostProcessor(mode="replace")
    with pytest.raises(ValueError, match="cluster_space='tsne' decides only after"):
        DBSCANPostProcessor(mode="override", cluster_space="tsne")
    with pytest.raises(ValueError, match="pca_components"):
        DBSCANPostProcessor(pca_components=0)


# ---------------------------------------------------------------- t-SNE and plots


def test_tsne_keeps_the_outliers_apart_and_lowers_perplexity(known: dict) -> None:
    points = EmbeddingProjector(None).fit(known["normal"]).transform(np.r_[known["normal"], known["test"]])
    xy, note = embed_tsne(points, perplexity=50.0)
    assert xy.shape == (len(points), 2) and note == "t-SNE perplexity lowered from 50 to 35 for 106 images"
    detector = DBSCANDetector(min_samples=5).fit(xy[:80])
    assert detector.assign(xy[80:]).anomalous[-6:].all()
    with pytest.raises(DegenerateInputError, match="at least 4"):
        embed_tsne(points[:3])


def test_plot_writes_a_png(known: dict, tmp_path) -> None:
    projector, detector = _fit(known["normal"], 2, min_samples=5)
    assignment = detector.assign(projector.transform(known["test"]))
    path = plot_clusters(tmp_path / "p.png", projector.transform(known["normal"]), detector.normal_labels_,
                         projector.transform(known["test"]), known["gt"], assignment.labels, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
