"""Scores of a fitted model and their metrics (anomalib's metric classes), raw and normalised side by side; the
thresholds fixed on validation and applied to test (see ``docs/measuring.md``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.metrics.aupro import _AUPRO
from anomalib.metrics.auroc import _AUROC
from anomalib.metrics.threshold.f1_adaptive_threshold import _F1AdaptiveThreshold
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor

from .map_offset import mean_map_offset

# Pixel metrics on maps and masks shrunk to at most this many pixels a side: cheap on hundreds of images.
PIXEL_SIZE = 128


@dataclass
class Predictions:
    """Image scores ``(N,)``, labels ``(N,)``; maps and masks ``(N, h, w)`` (``masks`` None without any mask);
    ``normalised_*``: the same after the model's post-processor (min-max with validation statistics, clamped)."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    normalised_scores: np.ndarray | None = None
    normalised_maps: np.ndarray | None = None
    map_scale: tuple[float, float] = (1.0, 1.0)  # input pixels per ``maps`` pixel, (x, y)


def _small(tensor: torch.Tensor, mode: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, H, W)`` → ``size`` (default: at most ``PIXEL_SIZE`` a side)."""
    height, width = tensor.shape[-2:]
    if size is None:
        scale = PIXEL_SIZE / max(height, width)
        if scale >= 1:
            return tensor
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if tuple(size) == (height, width):
        return tensor
    return F.interpolate(tensor[:, None].float(), size=size, mode=mode)[:, 0]


@torch.no_grad()
def predict(model: AnomalibModule, batches: Iterable) -> Predictions:
    """Run the torch model (its pre-processing, its eval forward) over ``batches``; normalise with its
    post-processor too. Maps are resized to their mask's size first, then both shrunk."""
    network = model.model
    was_training = network.training
    network.eval()
    device = next(iter(network.parameters()), torch.empty(0)).device
    transform = getattr(model.pre_processor, "transform", None)
    post = model.post_processor if isinstance(model.post_processor, PostProcessor) else None
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("scores", "labels", "maps", "masks", "nscores", "nmaps")}
    has_mask = False
    for batch in batches:
        images, mask = batch.image.to(device), batch.gt_mask
        output = network(transform(images) if transform is not None else images)
        raw = InferenceBatch(pred_score=output.pred_score.reshape(-1), anomaly_map=output.anomaly_map)
        with_mask = mask is not None and mask.numel()
        shape = tuple(mask.shape[-2:]) if with_mask else tuple(output.anomaly_map.shape[-2:])
        for prefix, values in (("", raw), ("n", post(raw) if post is not None else None)):
            if values is not None:
                maps = values.anomaly_map.detach().cpu().reshape(len(images), *values.anomaly_map.shape[-2:])
                columns[f"{prefix}scores"].append(values.pred_score.detach().cpu().reshape(-1).double())
                columns[f"{prefix}maps"].append(_small(_small(maps.float(), "bilinear", shape), "area"))
        columns["labels"].append(batch.gt_label.cpu().reshape(-1).long())
        if with_mask:
            has_mask = has_mask or bool(mask.any())
            columns["masks"].append(_small(mask.cpu().reshape(len(images), *shape).float(), "nearest") > 0.5)
        else:
            columns["masks"].append(torch.zeros_like(columns["maps"][-1], dtype=torch.bool))
    network.train(was_training)
    arrays = {k: torch.cat(v).numpy() if v else None for k, v in columns.items()}
    small = arrays["maps"].shape[-2:]
    return Predictions(arrays["scores"], arrays["labels"], arrays["maps"].astype(np.float32),
                       arrays["masks"] if has_mask else None, arrays["nscores"], arrays["nmaps"],
                       map_scale=(shape[1] / small[1], shape[0] / small[0]))


def _unit(values: np.ndarray) -> torch.Tensor:
    """Values rescaled to [0, 1] (order kept, float64): torchmetrics would squash values outside [0, 1] with a
    sigmoid, which ties large raw scores."""
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64)).flatten()
    span = tensor.max() - tensor.min() if tensor.numel() else torch.tensor(0.0)
    return (tensor - tensor.min()) / span if span > 0 else torch.zeros_like(tensor)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC (anomalib's); NaN when only one class is present."""
    labels = np.asarray(labels).reshape(-1)
    if len(np.unique(labels)) != 2:
        return math.nan
    return float(_AUROC()(_unit(scores), torch.as_tensor(labels).long()))


def aupro(masks: np.ndarray | None, maps: np.ndarray | None) -> float:
    """anomalib's AUPRO (false-positive rate up to 0.3) over all images; NaN without masks."""
    if masks is None or maps is None or not masks.any():
        return math.nan
    metric = _AUPRO()
    metric.update(_unit(maps).reshape(maps.shape).float(), torch.as_tensor(masks).long())
    return float(metric.compute())


def pixel_auroc(masks: np.ndarray | None, maps: np.ndarray) -> float:
    """AUROC of the map values ``(N, H, W)`` against the defect masks; NaN without masks or defects."""
    return math.nan if masks is None else auroc(masks.reshape(-1), maps.reshape(-1))


def metrics(predictions: Predictions, with_aupro: bool = False) -> dict[str, float]:
    """``image_auroc``, ``pixel_auroc`` (and ``pixel_aupro``) on raw scores, each with its ``_normalised`` twin;
    with masks, the mean signed map offset ``map_offset_x`` / ``_y`` in input pixels (:mod:`.map_offset`)."""
    p = predictions
    values = {}
    for suffix, scores, maps in (("", p.scores, p.maps), ("_normalised", p.normalised_scores, p.normalised_maps)):
        if scores is None:
            continue
        values[f"image_auroc{suffix}"] = auroc(p.labels, scores)
        values[f"pixel_auroc{suffix}"] = pixel_auroc(p.masks, maps)
        if with_aupro:
            values[f"pixel_aupro{suffix}"] = aupro(p.masks, maps)
    if p.masks is not None:  # normalisation is monotonic: the hottest pixels, and so the offset, are the same
        offset_x, offset_y = mean_map_offset(torch.as_tensor(p.maps), torch.as_tensor(p.masks))
        values["map_offset_x"], values["map_offset_y"] = offset_x * p.map_scale[0], offset_y * p.map_scale[1]
    return values


def raw_metrics(model: AnomalibModule, batches: Iterable, with_aupro: bool = False) -> dict[str, float]:
    """:func:`metrics` of :func:`predict`: what a benchmark adds next to anomalib's Engine.test figures."""
    return metrics(predict(model, batches), with_aupro)


def adaptive_threshold(validation: Predictions) -> float:
    """anomalib's F1-adaptive threshold on the validation scores (raw units; needs defects in validation)."""
    return float(_F1AdaptiveThreshold()(torch.from_numpy(validation.scores), torch.from_numpy(validation.labels)))


def percentile_threshold(validation: Predictions, q: float) -> float:
    """``q``-th percentile of the validation split's normal scores (a false-alarm rate of about ``1 − q/100``)."""
    normal = validation.scores[validation.labels == 0]
    return float(np.percentile(normal, q)) if len(normal) else math.nan


def f1_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Binary F1 of boolean predictions against boolean truth (0 when nothing is found)."""
    tp, fp, fn = int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def at_threshold(predictions: Predictions, threshold: float) -> dict[str, float]:
    """F1, precision, recall and false-alarm rate (share of normal images flagged) of ``score > threshold``."""
    predicted, truth = predictions.scores > threshold, predictions.labels == 1
    tp, fp, fn = int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    normals = int((~truth).sum())
    return {"f1": f1_score(predicted, truth), "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0, "false_alarm_rate": fp / normals if normals else math.nan,
            "threshold": threshold}


def evaluate(validation: Predictions, test: Predictions, percentile: float) -> dict[str, float]:
    """Validation image and pixel AUROC (the selection criteria, see :func:`validation_rank`), test metrics (raw and
    normalised), and F1 / false-alarm rate on test at the two thresholds fixed on validation."""
    values = {"val_image_auroc": auroc(validation.labels, validation.scores),
              "val_pixel_auroc": pixel_auroc(validation.masks, validation.maps), **metrics(test)}
    for name, threshold in (("adaptive", adaptive_threshold(validation)),
                            ("percentile", percentile_threshold(validation, percentile))):
        values.update({f"{name}_{k}": v for k, v in at_threshold(test, threshold).items()})
    return values


def validation_rank(per_category: Iterable[Mapping[str, float]]) -> tuple[float, float]:
    """Rank of a model on validation data of one or more categories (higher is better): the mean validation image
    AUROC, ties broken by the mean validation pixel AUROC where masks exist. Small validation sets tie often at
    image level (every defect above every normal image); the maps still tell how well the defects were found.
    NaN values are left out; a rank without any finite value is ``-inf``."""

    rows = list(per_category)

    def mean(key: str) -> float:
        values = [row[key] for row in rows if math.isfinite(row.get(key, math.nan))]
        return sum(values) / len(values) if values else -math.inf

    return mean("val_image_auroc"), mean("val_pixel_auroc")


def roc_points(predictions: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Test ROC curve ``(fpr, tpr)`` on raw scores."""
    curve = _AUROC()
    curve.update(_unit(predictions.scores), torch.as_tensor(predictions.labels).long())
    fpr, tpr = curve._compute()  # noqa: SLF001 (anomalib's own curve of its AUROC)
    return fpr.numpy(), tpr.numpy()


def pipeline_metrics(run: Callable[[torch.Tensor], dict[str, torch.Tensor]], batches: Iterable) -> dict[str, float]:
    """Image and pixel AUROC of a whole pipeline (``run``: images → outputs by name, e.g. an exported model whose
    graph holds anomalib's normalisation) on the test batches, at the maps' own size."""
    scores, labels, maps, masks = [], [], [], []
    for batch in batches:
        outputs = run(batch.image)
        anomaly_map = torch.as_tensor(outputs["anomaly_map"]).float()
        scores.append(torch.as_tensor(outputs["pred_score"]).flatten().double())
        labels.append(batch.gt_label.flatten())
        maps.append(anomaly_map.flatten())
        masks.append(_small(batch.gt_mask.float().reshape(len(batch.image), *batch.gt_mask.shape[-2:]), "nearest",
                            tuple(anomaly_map.shape[-2:])).flatten() > 0.5)
    return {"image_AUROC": auroc(torch.cat(labels).numpy(), torch.cat(scores).numpy()),
            "pixel_AUROC": auroc(torch.cat(masks).numpy(), torch.cat(maps).numpy())}
