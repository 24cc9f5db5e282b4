"""Scatter plots of 2-D embeddings: ground truth next to the DBSCAN decision, misclassified images ringed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .embedding_clusters import NOISE


def plot_clusters(
    path: str | Path,
    normal_xy: np.ndarray,
    normal_labels: np.ndarray,
    test_xy: np.ndarray,
    gt_labels: np.ndarray,
    test_labels: np.ndarray,
    title: str,
) -> Path:
    """Write a two-panel PNG and return its path.

    Args:
        path: output file.
        normal_xy: ``(N, 2)`` coordinates of the normal (reference) images.
        normal_labels: ``(N,)`` their DBSCAN labels (``-1`` = noise).
        test_xy: ``(M, 2)`` coordinates of the test images.
        gt_labels: ``(M,)`` ground truth (1 = anomalous).
        test_labels: ``(M,)`` DBSCAN labels of the test images (``-1`` = noise = predicted anomalous).
        title: figure title (which space, which model).

    Left panel: test images by ground truth. Right panel: every image by DBSCAN cluster, noise as red crosses.
    In both, a black ring marks a test image whose DBSCAN decision disagrees with its ground truth.
    """
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch and nothing left open.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gt = np.asarray(gt_labels).astype(bool)
    noise = np.asarray(test_labels) == NOISE
    wrong = noise != gt
    figure = Figure(figsize=(12, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    colours = colormaps["tab10"]

    left.scatter(*normal_xy.T, s=10, c="lightgrey", label="normal (reference)")
    left.scatter(*test_xy[~gt].T, s=28, c="tab:blue", label="test: normal")
    left.scatter(*test_xy[gt].T, s=34, c="tab:red", marker="^", label="test: anomalous")
    left.set_title("ground truth")

    reference_noise = np.asarray(normal_labels) == NOISE
    right.scatter(*normal_xy[reference_noise].T, s=12, c="grey", marker="x", label="reference: noise")
    for cluster in np.unique(normal_labels[~reference_noise]):
        colour = colours(int(cluster) % 10)
        right.scatter(*normal_xy[normal_labels == cluster].T, s=10, color=colour, alpha=0.35)
        members = np.asarray(test_labels) == cluster
        right.scatter(*test_xy[members].T, s=28, color=colour, label=f"cluster {cluster}")
    right.scatter(*test_xy[noise].T, s=40, c="tab:red", marker="X", label="noise (→ anomalous)")
    right.set_title("DBSCAN (faint: reference images)")

    for axis in (left, right):
        axis.scatter(*test_xy[wrong].T, s=150, facecolors="none", edgecolors="black", linewidths=1.2,
                     label=f"misclassified ({int(wrong.sum())})")
        axis.legend(fontsize=8, loc="best")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
