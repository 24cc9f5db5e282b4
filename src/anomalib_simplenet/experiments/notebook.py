"""Small helpers that keep the notebooks in ``notebooks/`` short: data set-up, raw scores, image grids."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anomalib_simplenet.data import make_synthetic_mvtec
from anomalib_simplenet.data.subset import make_subset

DATASETS = ("synthetic", "magnetic_tile")


def prepare_data(
    data: str,
    data_root: str | Path,
    out: str | Path,
    n_train: int = 24,
    image_size: int = 128,
) -> tuple[Path, str]:
    """``(root, category)`` of an MVTec-layout dataset for ``anomalib.data.MVTecAD``.

    Args:
        data: ``"synthetic"`` (generated under ``out/data``, ``image_size`` px) or ``"magnetic_tile"`` (read from
            ``data_root/magnetic_tile``).
        data_root: MVTec-layout root holding ``magnetic_tile/`` (ignored for synthetic data).
        out: working folder.
        n_train: training images. Synthetic: generated, with ``max(4, n_train // 3)`` test images per type.
            magnetic_tile: ``0`` = the full set in place; otherwise an evenly spaced subset of that many training
            images and ``max(4, n_train // 4)`` test images per type is linked (with masks) under ``out/data``
            (:func:`anomalib_simplenet.data.subset.make_subset`).
        image_size: side of the synthetic images.
    """
    if data not in DATASETS:
        msg = f"data must be one of {DATASETS}, got {data!r}"
        raise ValueError(msg)
    target = Path(out) / "data"
    if data == "synthetic":
        n_test = max(4, n_train // 3)
        make_synthetic_mvtec(target, image_size=image_size, n_train=n_train, n_test_good=n_test, n_test_defect=n_test)
        return target, "synthetic"
    source = Path(data_root) / data
    if not (source / "train" / "good").is_dir():
        msg = f"data_root: no MVTec-layout {data!r} at {source} (expected {source / 'train' / 'good'})"
        raise FileNotFoundError(msg)
    if n_train <= 0:
        return Path(data_root), data
    n_test = max(4, n_train // 4)
    return make_subset(source, target / data, n_train, test_good=n_test, test_defects=n_test), data


@torch.no_grad()
def raw_image_scores(model: torch.nn.Module, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Image scores before anomalib's normalisation, and ground-truth labels, for all images of ``batches``.

    ``model`` is an anomalib module: its pre-processor's transform, then its torch model (``model.model``) in eval
    mode, so the scores are in the model's own units (e.g. Mahalanobis distances), comparable with raw thresholds.
    """
    network = model.model
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    scores, labels = [], []
    for batch in batches:
        images = model.pre_processor.transform(batch.image.to(device))
        scores.append(network(images).pred_score.flatten().cpu())
        labels.append(batch.gt_label.flatten().cpu())
    network.train(was_training)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def pick_images(
    batches: Iterable,
    n_anomalous: int = 3,
    n_normal: int = 2,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The first ``n_anomalous`` anomalous, then ``n_normal`` normal images of ``batches``, stacked.

    ``transform`` (e.g. a model's ``pre_processor.transform``) is applied per batch first; without it, images of
    different batches must have the same size.
    """
    anomalous: list[torch.Tensor] = []
    normal: list[torch.Tensor] = []
    for batch in batches:
        images = transform(batch.image) if transform is not None else batch.image
        for image, label in zip(images, batch.gt_label, strict=True):
            chosen = anomalous if label else normal
            if len(chosen) < (n_anomalous if label else n_normal):
                chosen.append(image)
        if len(anomalous) == n_anomalous and len(normal) == n_normal:
            break
    return torch.stack(anomalous + normal)


def show_images(
    paths: Sequence[str | Path],
    titles: Sequence[str] | None = None,
    ncols: int = 1,
    width: float = 10,
) -> Figure:
    """Image files in a grid (e.g. anomalib's visualiser output: image | mask | anomaly map | prediction)."""
    nrows = max(1, -(-len(paths) // ncols))
    images = [Image.open(path) for path in paths]
    aspect = images[0].height / images[0].width if images else 1.0
    figure = Figure(figsize=(width, width / ncols * aspect * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, ncols)).ravel()
    for index, axis in enumerate(axes):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            axis.set_title(titles[index] if titles else Path(paths[index]).parent.name + "/" + Path(paths[index]).name,
                           fontsize="small")
    return figure


def score_histograms(scores: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: dict[str, float]) -> Figure:
    """Per model: histogram of normal vs anomalous image scores and its threshold (a vertical line)."""
    figure = Figure(figsize=(5 * len(scores), 3.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(scores)))
    for axis, (name, (values, labels)) in zip(axes, scores.items(), strict=True):
        bins = np.histogram_bin_edges(values, bins=20)
        axis.hist(values[labels == 0], bins=bins, alpha=0.6, label="normal")
        axis.hist(values[labels == 1], bins=bins, alpha=0.6, label="anomalous")
        if name in thresholds:
            axis.axvline(thresholds[name], color="k", linestyle="--", label="threshold")
        axis.set(title=name, xlabel="raw image score", ylabel="images")
        axis.legend(fontsize="small")
    return figure
