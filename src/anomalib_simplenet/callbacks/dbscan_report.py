"""What :class:`~.dbscan.DBSCANPostProcessor` reports after a test run: metrics, CSV, scatter plots, a table.

Files and printing happen on rank 0 only; every rank holds the same gathered rows and metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from anomalib_simplenet.clustering import (
    DBSCANDetector,
    EmbeddingProjector,
    NoveltyAssignment,
    detection_metrics,
    inspect_assignment,
)

RESULTS_CSV = "dbscan_results.csv"
PCA_PLOT = "dbscan_pca.png"
TSNE_PLOT = "dbscan_tsne.png"


def assignment_metrics(
    gt: np.ndarray, assignment: NoveltyAssignment, detector: DBSCANDetector
) -> tuple[dict[str, float], list[str]]:
    """Detection metrics of DBSCAN's decisions on test labels ``gt`` ``(M,)``, the clustering's counts and notes.

    The notes name outcomes that are valid but say little (e.g. every image noise), and missing labels (the
    detection metrics are then NaN).
    """
    notes = list(inspect_assignment(gt, assignment))
    if (gt < 0).any():
        notes.append("some test images have no ground-truth label: the metrics are NaN")
        metrics = dict.fromkeys(("precision", "recall", "f1", "accuracy", "auroc"), float("nan"))
    else:
        metrics = detection_metrics(gt, assignment)
    metrics |= {
        "n_clusters": float(detector.n_clusters_),
        "n_noise": float(assignment.anomalous.sum()),
        "eps": float(detector.eps_),
    }
    return metrics, notes


@rank_zero_only
def write_results(folder: Path, rows: list[dict[str, Any]]) -> None:
    """``dbscan_results.csv``: one row per test image."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / RESULTS_CSV).open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@rank_zero_only
def write_plots(
    folder: Path,
    model: str,
    clustering: tuple[EmbeddingProjector, DBSCANDetector, str],
    normal: np.ndarray,
    test: np.ndarray,
    gt: np.ndarray,
    assignment: NoveltyAssignment,
    tsne_xy: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """``dbscan_pca.png`` (on the normal images' first two principal axes) and, with ``tsne_xy``, ``dbscan_tsne.png``.

    Args:
        folder: where the files go.
        model: the model's class name, for the titles.
        clustering: the fitted projector and detector and the space DBSCAN ran in (``"pca"`` or ``"tsne"``).
        normal: normal reference embeddings ``(N, E)``.
        test: test embeddings ``(M, E)``.
        gt: ground-truth labels ``(M,)`` (``-1`` is drawn as normal).
        assignment: DBSCAN's labels of the test images.
        tsne_xy: 2-D t-SNE coordinates of the normal ``(N, 2)`` and test ``(M, 2)`` images, or ``None``.
    """
    from anomalib_simplenet.clustering.plots import plot_clusters  # matplotlib only when plotting

    projector, detector, cluster_space = clustering
    space = cluster_space.upper()
    if space == "PCA":
        space = f"PCA ({projector.n_components_} dims, {projector.explained_variance_:.0%} var.)"
    subtitle = f"DBSCAN in {space}, eps={detector.eps_:.3g}, min_samples={detector.min_samples}"
    plane = EmbeddingProjector(2).fit(normal)  # the first two principal axes, for viewing
    normal_labels = detector.normal_labels_  # from the space DBSCAN ran in
    gt_plot = np.clip(gt, 0, 1)
    plot_clusters(folder / PCA_PLOT, plane.transform(normal), normal_labels, plane.transform(test), gt_plot,
                  assignment.labels, f"{model}: 2-D PCA. {subtitle}")
    if tsne_xy is not None:
        normal_xy, test_xy = tsne_xy
        plot_clusters(folder / TSNE_PLOT, normal_xy, normal_labels, test_xy, gt_plot, assignment.labels,
                      f"{model}: 2-D t-SNE. {subtitle}")


@rank_zero_only
def print_table(
    title: str, metrics: dict[str, float], messages: list[str], folder: Path, plots: bool
) -> None:
    """The metrics, the notes and the files written, as a short printed table."""
    width = max(len(name) for name in metrics)
    lines = [title]
    lines += [f"  {name:<{width}}  {_format(value)}" for name, value in metrics.items()]
    lines += [f"  note: {message}" for message in messages]
    lines.append(f"  files: {folder / RESULTS_CSV}" + (f", {PCA_PLOT}, {TSNE_PLOT}" if plots else ""))
    print_line("\n".join(lines))


def print_line(text: str) -> None:
    """Print at once (also under buffered output of a CLI run)."""
    print(text, flush=True)


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"
