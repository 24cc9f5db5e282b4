"""DBSCAN on per-image embeddings as a one-class detector: fit on normal images, read noise as anomalies.

The pipeline, all fitted on the *normal* embeddings only (so test images never shape the model):

1. :class:`EmbeddingProjector` standardises each feature with the normal mean/std and reduces with PCA
   (a number of components, or the fraction of variance to keep).
2. :func:`choose_eps` picks DBSCAN's ``eps`` from the k-distance curve of the normal points (rule below).
3. :class:`DBSCANDetector` runs DBSCAN on the normal points and labels a new point the way DBSCAN labels a
   border point: the cluster of its nearest core point when that lies within ``eps``, noise (``-1``)
   otherwise. The distance to the nearest core point is the continuous anomaly score (noise ⇔ score > eps).

New points never become core points, so a group of similar defects cannot form a "cluster" of its own and
hide from the detector, as it would if DBSCAN ran on normal and test images together.

**eps rule.** For ``min_samples = k`` a point is a core point iff its (k-1)-th nearest *other* point lies
within ``eps`` (DBSCAN counts the point itself); call that distance its k-distance. ``eps`` is the smallest
radius at which at least ``eps_quantile`` (default 0.95) of the normal images are core points: the
inverted-CDF quantile of their k-distances, always one of them. On the sorted k-distance curve this is the
point just before its steep tail (the "knee" read off at a fixed share, which stays stable on a few dozen
images where a curvature-based knee estimate does not). The remaining ~5% of normal images may be border
points or noise, so the rule tolerates a few outliers among the normal images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import DBSCAN
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

NOISE = -1


class DegenerateInputError(ValueError):
    """Input on which DBSCAN cannot give a meaningful answer; the message says why and what to change."""


def finite_rows(embeddings: np.ndarray) -> np.ndarray:
    """Boolean mask ``(N,)`` of the rows of ``embeddings`` ``(N, E)`` without NaN or inf."""
    return np.isfinite(embeddings).all(axis=1)


class EmbeddingProjector:
    """Standardise with the normal images' statistics, then PCA fitted on them: ``(N, E)`` → ``(N, d)``.

    Args:
        n_components: number of PCA components (``int``), fraction of explained variance to keep
            (``float`` in ``(0, 1)``), or ``None``/``1.0`` for all components.
    """

    def __init__(self, n_components: int | float | None = 0.9) -> None:  # noqa: PYI041 - count vs fraction
        valid_int = isinstance(n_components, int) and not isinstance(n_components, bool) and n_components >= 1
        valid_float = isinstance(n_components, float) and 0.0 < n_components <= 1.0
        if not (n_components is None or valid_int or valid_float):
            msg = f"pca_components must be an int >= 1, a float in (0, 1] or None, got {n_components!r}"
            raise ValueError(msg)
        self.n_components = n_components

    def fit(self, normal: np.ndarray) -> EmbeddingProjector:
        """Fit on finite normal embeddings ``(N, E)`` (N >= 2)."""
        normal = np.asarray(normal, dtype=np.float64)
        if len(normal) < 2 or not finite_rows(normal).all():
            msg = f"the projector needs at least 2 finite normal embeddings, got {len(normal)} rows"
            raise DegenerateInputError(msg)
        self.mean_ = normal.mean(axis=0)
        std = normal.std(axis=0)
        # A feature constant on normal images keeps its raw scale (dividing by ~0 would blow up test deviations).
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        standardized = (normal - self.mean_) / self.scale_
        most = min(standardized.shape)
        if self.n_components is None or self.n_components == 1.0:
            components: int | float = most
        elif isinstance(self.n_components, int):
            components = min(self.n_components, most)
        else:
            components = self.n_components
        self.pca_ = PCA(n_components=components, svd_solver="full").fit(standardized)
        return self

    @property
    def n_components_(self) -> int:
        """Dimension ``d`` of the projected space."""
        return int(self.pca_.n_components_)

    @property
    def explained_variance_(self) -> float:
        """Fraction of the normal images' (standardised) variance the kept components explain."""
        return float(self.pca_.explained_variance_ratio_.sum())

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Project embeddings ``(M, E)`` → ``(M, d)``; non-finite rows stay NaN."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        out = np.full((len(embeddings), self.n_components_), np.nan)
        finite = finite_rows(embeddings)
        if finite.any():
            out[finite] = self.pca_.transform((embeddings[finite] - self.mean_) / self.scale_)
        return out


def core_distances(points: np.ndarray, min_samples: int) -> np.ndarray:
    """Distance ``(N,)`` from each of ``points`` ``(N, d)`` to its ``(min_samples-1)``-th nearest other point.

    A point is a DBSCAN core point iff this is ``<= eps``.
    """
    neighbours = NearestNeighbors(n_neighbors=min_samples).fit(points)
    distances, _ = neighbours.kneighbors(points)  # column 0 is the point itself (distance 0)
    return distances[:, -1]


def choose_eps(points: np.ndarray, min_samples: int, quantile: float = 0.95) -> float:
    """Smallest ``eps`` making at least ``quantile`` of ``points`` ``(N, d)`` core points (module docstring)."""
    if not 0.0 < quantile <= 1.0:
        msg = f"eps_quantile must be in (0, 1], got {quantile}"
        raise ValueError(msg)
    # inverted_cdf: the smallest k-distance d with #{k-distance <= d} >= quantile * N, an observed value.
    eps = float(np.quantile(core_distances(points, min_samples), quantile, method="inverted_cdf"))
    if not eps > 0.0:
        msg = (
            f"the normal embeddings coincide: the {quantile:.0%} quantile of their {min_samples - 1}-th neighbour "
            "distances is 0, so no eps separates anything (is the model untrained or its embedding constant?)"
        )
        raise DegenerateInputError(msg)
    return eps


@dataclass(frozen=True)
class NoveltyAssignment:
    """DBSCAN labels of new points: ``labels`` ``(M,)`` (cluster id, ``-1`` = noise) and ``scores`` ``(M,)``.

    ``scores`` is the distance to the nearest core point (NaN where the embedding was not finite; such points
    are labelled noise: they cannot be placed in any cluster).
    """

    labels: np.ndarray
    scores: np.ndarray

    @property
    def anomalous(self) -> np.ndarray:
        """``(M,)`` bool: the points DBSCAN calls noise."""
        return self.labels == NOISE


class DBSCANDetector:
    """DBSCAN fitted on normal points; new points get the label DBSCAN would give them as border points.

    Args:
        min_samples: DBSCAN's ``min_samples`` (neighbourhood size of a core point, the point included), >= 2.
        eps: neighbourhood radius; ``None`` chooses it with :func:`choose_eps`.
        eps_quantile: share of normal points that the automatic ``eps`` makes core points.
    """

    def __init__(self, min_samples: int = 5, eps: float | None = None, eps_quantile: float = 0.95) -> None:
        if min_samples < 2:
            msg = f"min_samples must be >= 2 (with 1 every point is a core point), got {min_samples}"
            raise ValueError(msg)
        if eps is not None and not eps > 0:
            msg = f"eps must be > 0 or None (automatic), got {eps}"
            raise ValueError(msg)
        self.min_samples = min_samples
        self.eps = eps
        self.eps_quantile = eps_quantile

    def check_enough(self, count: int) -> None:
        """Raise :class:`DegenerateInputError` when ``count`` normal images cannot give a core point."""
        if count < self.min_samples:
            msg = (
                f"only {count} usable normal images for min_samples={self.min_samples}: DBSCAN cannot find a core "
                "point; use more normal images or a smaller min_samples"
            )
            raise DegenerateInputError(msg)

    def fit(self, normal: np.ndarray) -> DBSCANDetector:
        """Cluster the finite normal points ``(N, d)``; raises :class:`DegenerateInputError` when it cannot."""
        normal = np.asarray(normal, dtype=np.float64)
        self.check_enough(len(normal))
        self.eps_ = self.eps if self.eps is not None else choose_eps(normal, self.min_samples, self.eps_quantile)
        dbscan = DBSCAN(eps=self.eps_, min_samples=self.min_samples).fit(normal)
        core = dbscan.core_sample_indices_
        if len(core) == 0:
            msg = (
                f"all {len(normal)} normal images are DBSCAN noise at eps={self.eps_:.4g}, "
                f"min_samples={self.min_samples}: there is no cluster to compare test images with; "
                "raise eps (or leave it None for the automatic rule) or lower min_samples"
            )
            raise DegenerateInputError(msg)
        self.normal_labels_ = dbscan.labels_
        self.core_points_ = normal[core]
        self.core_labels_ = dbscan.labels_[core]
        self.n_clusters_ = int(self.core_labels_.max() + 1)
        self._nearest_core = NearestNeighbors(n_neighbors=1).fit(self.core_points_)
        return self

    def assign(self, points: np.ndarray) -> NoveltyAssignment:
        """Labels and scores of new points ``(M, d)`` (see :class:`NoveltyAssignment`)."""
        points = np.asarray(points, dtype=np.float64)
        labels = np.full(len(points), NOISE, dtype=np.int64)
        scores = np.full(len(points), np.nan)
        finite = finite_rows(points) if len(points) else np.zeros(0, dtype=bool)
        if finite.any():
            distance, index = self._nearest_core.kneighbors(points[finite])
            scores[finite] = distance[:, 0]
            # DBSCAN's neighbourhoods are closed balls (distance <= eps), so the border rule is too.
            labels[finite] = np.where(distance[:, 0] <= self.eps_, self.core_labels_[index[:, 0]], NOISE)
        return NoveltyAssignment(labels=labels, scores=scores)


def detection_metrics(gt_labels: np.ndarray, assignment: NoveltyAssignment) -> dict[str, float]:
    """Precision, recall, F1, accuracy of "noise = anomalous" and AUROC of the scores, against ``gt`` ``(M,)``.

    Anomalous is the positive class. Undefined ratios are 0 (as anomalib's F1); AUROC is NaN when the test
    set has one class only, and uses the finite scores only.
    """
    gt = np.asarray(gt_labels).astype(bool)
    predicted = assignment.anomalous
    metrics = {
        "precision": precision_score(gt, predicted, zero_division=0),
        "recall": recall_score(gt, predicted, zero_division=0),
        "f1": f1_score(gt, predicted, zero_division=0),
        "accuracy": accuracy_score(gt, predicted),
        "auroc": float("nan"),
    }
    finite = np.isfinite(assignment.scores)
    if len(np.unique(gt[finite])) == 2:
        metrics["auroc"] = roc_auc_score(gt[finite], assignment.scores[finite])
    return {name: float(value) for name, value in metrics.items()}


def inspect_assignment(gt_labels: np.ndarray, assignment: NoveltyAssignment) -> list[str]:
    """Plain-language notes on outcomes that are valid but say little (empty list when all is well)."""
    notes = []
    gt = np.asarray(gt_labels).astype(bool)
    count = len(assignment.labels)
    non_finite = int((~np.isfinite(assignment.scores)).sum())
    if non_finite:
        notes.append(f"{non_finite} of {count} test embeddings contain NaN/inf: labelled noise, left out of AUROC")
    if count and assignment.anomalous.all():
        notes.append(
            f"all {count} test images are DBSCAN noise: eps is small for the test images (domain shift, or too "
            "few normal images); the decision flags everything",
        )
    elif count and not assignment.anomalous.any():
        clusters = np.unique(assignment.labels)
        where = "one cluster" if len(clusters) == 1 else f"{len(clusters)} clusters"
        notes.append(f"no test image is noise: all {count} fell into {where}; the decision flags nothing")
    if count and len(np.unique(gt)) < 2:
        notes.append("the test images have one ground-truth class only: AUROC is undefined (NaN)")
    return notes


def embed_tsne(points: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> tuple[np.ndarray, str | None]:
    """2-D t-SNE of ``points`` ``(M, d)`` → ``((M, 2), note)``; ``note`` says when the perplexity was lowered.

    t-SNE needs ``perplexity < M``; with few images it is lowered to ``(M - 1) / 3`` (about three
    perplexities of neighbours fit in the set, the usual rule of thumb).
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 4:
        msg = f"t-SNE needs at least 4 images, got {len(points)}"
        raise DegenerateInputError(msg)
    note = None
    usable = min(perplexity, (len(points) - 1) / 3)
    if usable < perplexity:
        note = f"t-SNE perplexity lowered from {perplexity:g} to {usable:.3g} for {len(points)} images"
    # PCA initialisation is more stable than random, but needs at least 2 input dimensions.
    init = "pca" if points.shape[1] >= 2 else "random"
    tsne = TSNE(n_components=2, perplexity=usable, init=init, learning_rate="auto", random_state=seed)
    return tsne.fit_transform(points), note


def embed_tsne_jointly(
    normal: np.ndarray, test: np.ndarray, perplexity: float = 30.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """One 2-D t-SNE of normal ``(N, d)`` and test ``(M, d)`` points → ``(N, 2)``, ``(M, 2)`` and the note.

    t-SNE has no transform for new points, so both sets are embedded together; test rows with NaN/inf stay out
    of the fit and get NaN coordinates.
    """
    finite = finite_rows(test)
    xy, note = embed_tsne(np.concatenate([normal, test[finite]]), perplexity, seed)
    test_xy = np.full((len(test), 2), np.nan)
    test_xy[finite] = xy[len(normal):]
    return xy[: len(normal)], test_xy, note
