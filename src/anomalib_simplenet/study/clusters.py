"""DBSCAN on the best model's image embeddings (PCA space and t-SNE space), through the package's callback."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.models import AnomalibModule

from anomalib_simplenet.callbacks import DBSCANPostProcessor

SPACES = ("pca", "tsne")


def always_anomalous_f1(labels: np.ndarray) -> float:
    """F1 of answering "anomalous" for every image: ``2p / (1 + p)`` with ``p`` the share of anomalous images."""
    share = float(np.mean(labels == 1)) if len(labels) else math.nan
    return 2 * share / (1 + share) if share > 0 else 0.0


def run_dbscan(
    model: AnomalibModule, datamodule: AnomalibDataModule, out: Path, min_samples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Test ``model`` once per clustering space with :class:`DBSCANPostProcessor` in report mode.

    Returns per space the callback's metrics (precision, recall, F1, accuracy, AUROC), ``notes`` and ``files``
    (its plots and per-image CSV, under ``out/<space>``).
    """
    results: dict[str, dict[str, Any]] = {}
    for space in SPACES:
        folder = out / space
        callback = DBSCANPostProcessor(mode="report", cluster_space=space, min_samples=min_samples,
                                       output_dir=folder, seed=seed)
        engine = Engine(callbacks=[callback], default_root_dir=folder / "engine", logger=False, accelerator="cpu",
                        devices=1, enable_progress_bar=False)
        engine.test(model, datamodule=datamodule, verbose=False)
        labels = np.array([int(row.get("gt_label", 0)) for row in callback.results])
        results[space] = {
            "metrics": dict(callback.metrics),
            "notes": list(getattr(callback, "messages", [])),
            "always_anomalous_f1": always_anomalous_f1(labels),
            "files": sorted(str(p) for p in folder.glob("*.png")),
        }
    return results
