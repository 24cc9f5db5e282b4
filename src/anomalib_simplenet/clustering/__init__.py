"""Density clustering of per-image embeddings (numpy/scikit-learn only, no Lightning).

:mod:`.embedding_clusters` holds the computation (standardise, PCA, eps rule, DBSCAN, scores, metrics) and
:mod:`.plots` the figures; :class:`anomalib_simplenet.callbacks.DBSCANPostProcessor` wires them into anomalib.
"""

from .embedding_clusters import (
    NOISE,
    DBSCANDetector,
    DegenerateInputError,
    EmbeddingProjector,
    NoveltyAssignment,
    choose_eps,
    core_distances,
    detection_metrics,
    embed_tsne,
    embed_tsne_jointly,
    finite_rows,
    inspect_assignment,
)

__all__ = [
    "NOISE",
    "DBSCANDetector",
    "DegenerateInputError",
    "EmbeddingProjector",
    "NoveltyAssignment",
    "choose_eps",
    "core_distances",
    "detection_metrics",
    "embed_tsne",
    "embed_tsne_jointly",
    "finite_rows",
    "inspect_assignment",
]
