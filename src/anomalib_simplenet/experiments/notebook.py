"""Helpers that keep the notebooks short: data set-up, image grids, score histograms, and the distillation study's
comparison at small size (fitted, scored and measured by the study's own functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule
from matplotlib.figure import Figure
from PIL import Image

from anomalib_simplenet.lab.data import make_synthetic_mvtec, subset
from anomalib_simplenet.lab.scores import evaluate, predict, validation_rank

DATASETS = ("synthetic", "magnetic_tile")


def prepare_data(
    data: str, data_root: str | Path, out: str | Path, n_train: int = 24, image_size: int = 128
) -> tuple[Path, str]:
    """``(root, category)`` of an MVTec-layout dataset: ``"synthetic"`` (generated under ``out/data``,
    ``image_size`` px, ``max(4, n_train // 3)`` test images per type) or ``"magnetic_tile"`` from ``data_root``
    (``n_train=0``: the full set in place; else a subset of ``n_train`` training and ``max(4, n_train // 4)`` test
    images per type under ``out/data``)."""
    if data not in DATASETS:
        msg = f"data must be one of {DATASETS}, got {data!r}"
        raise ValueError(msg)
    target, source = Path(out) / "data", Path(data_root) / data
    if data == "synthetic":
        n_test = max(4, n_train // 3)
        make_synthetic_mvtec(target, image_size=image_size, n_train=n_train, n_test_good=n_test, n_test_defect=n_test)
        return target, "synthetic"
    if not (source / "train" / "good").is_dir():
        msg = f"data_root: no MVTec-layout {data!r} at {source} (expected {source / 'train' / 'good'})"
        raise FileNotFoundError(msg)
    if n_train <= 0:
        return Path(data_root), data
    n_test = max(4, n_train // 4)
    return subset(Path(data_root), data, target, n_train, test_good=n_test, test_defects=n_test), data


def show_images(
    paths: Sequence[str | Path], titles: Sequence[str] | None = None, ncols: int = 1, width: float = 10
) -> Figure:
    """Image files in a grid (e.g. anomalib's visualiser output: image | mask | anomaly map | prediction)."""
    images = [Image.open(path) for path in paths]
    nrows, aspect = max(1, -(-len(paths) // ncols)), images[0].height / images[0].width if images else 1.0
    figure = Figure(figsize=(width, width / ncols * aspect * nrows), layout="constrained")
    for index, axis in enumerate(np.atleast_1d(figure.subplots(nrows, ncols)).ravel()):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            axis.set_title(titles[index] if titles else f"{Path(paths[index]).parent.name}/{Path(paths[index]).name}",
                           fontsize="small")
    return figure


def score_histograms(scores: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: dict[str, float]) -> Figure:
    """Per model (``name → (scores, labels)``): histogram of normal vs anomalous image scores and its threshold."""
    figure = Figure(figsize=(5 * len(scores), 3.5), layout="constrained")
    for axis, (name, (values, labels)) in zip(np.atleast_1d(figure.subplots(1, len(scores))), scores.items(),
                                              strict=True):
        bins = np.histogram_bin_edges(values, bins=20)
        axis.hist(values[labels == 0], bins=bins, alpha=0.6, label="normal")
        axis.hist(values[labels == 1], bins=bins, alpha=0.6, label="anomalous")
        if name in thresholds:
            axis.axvline(thresholds[name], color="k", linestyle="--", label="threshold")
        axis.set(title=name, xlabel="raw image score", ylabel="images")
        axis.legend(fontsize="small")
    return figure


def fit_study_model(
    kind: str, datamodule: AnomalibDataModule, out: str | Path, image_size: int, teacher: str = "efficientnet_lite0",
    pre_trained: bool = True, epochs: int = 5, patience: int = 3, seed: int = 0, **init_args: Any,
) -> AnomalibModule:
    """One model of the study (``kind``: teacher | scratch | distill | unet_ae) with the study's arguments and fit
    (early stopping, checkpoint of lowest validation loss); ``init_args``: the setting's own (e.g. ``latent_dim``).
    A failed fit raises ``RuntimeError``."""
    from anomalib_simplenet.lab.settings import Setting
    from anomalib_simplenet.lab.weights import weights_description
    from anomalib_simplenet.study.settings import fit_setting, resolve_init_args

    setting = Setting("notebook", kind=kind, arguments=dict(init_args))
    arguments = resolve_init_args(setting, image_size, teacher, pre_trained)
    result = fit_setting(setting, arguments, "notebook", datamodule, Path(out), epochs, patience, seed)
    if result.status != "ok" or result.model is None:
        msg = f"{setting.label}: {result.error} (traceback in {Path(out) / 'error.txt'})"
        raise RuntimeError(msg)
    print(f"{kind} weights: {weights_description(result.model)}")
    return result.model


def compare_models(
    models: Mapping[str, AnomalibModule], datamodule: AnomalibDataModule, percentile: float = 95.0
) -> dict[str, dict[str, float]]:
    """Per model, the study's metrics: ``val_image_auroc`` and ``val_pixel_auroc`` (the only ones a choice may use),
    test AUROCs on raw and normalised scores, test F1 at the validation threshold."""
    keys = ("val_image_auroc", "val_pixel_auroc", "image_auroc", "image_auroc_normalised", "pixel_auroc", "adaptive_f1")
    tables = {name: evaluate(predict(model, datamodule.val_dataloader()), predict(model, datamodule.test_dataloader()),
                             percentile) for name, model in models.items()}
    return {name: {key: metrics[key] for key in keys} for name, metrics in tables.items()}


def best_on_validation(table: Mapping[str, Mapping[str, float]]) -> str:
    """Name of the model ranked first on validation (:func:`~anomalib_simplenet.lab.scores.validation_rank`: image
    AUROC, ties broken by pixel AUROC; full ties: the first listed; NaN never wins)."""
    return max(table, key=lambda name: validation_rank([table[name]]))


def cost_table(
    models: Mapping[str, AnomalibModule], datamodule: AnomalibDataModule, out: str | Path, threads: int = 1,
    throughput_seconds: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per model, as the study measures it (raw test images each alone; a distilled student without its teacher):
    parameters, size and batch-1 latency of the torch FP32 export."""
    from anomalib_simplenet.study.run import measure_cost

    table = {}
    for index, (name, model) in enumerate(models.items()):
        cost = measure_cost(name, model, datamodule, Path(out) / f"model{index}", False, threads, throughput_seconds)
        record = cost["records"][0]
        if record["status"] != "ok":
            msg = f"{name}: {record['status']}"
            raise RuntimeError(msg)
        table[name] = {"parameters (M)": cost["parameters"] / 1e6, "size MB": record["size_mb"],
                       "latency ms (batch 1, median)": record["latency_ms_median"],
                       "latency ms (batch 1, p95)": record["latency_ms_p95"]}
    return table
