"""Scores of a fitted model on a split, and the study's metrics: AUROC, F1 and false-alarm rate at two thresholds.

Raw model scores are used (the torch model's ``pred_score``, before anomalib's min–max normalisation, which clips
and would tie the extremes). Two image thresholds, both fixed on the *validation* split, then applied to test:

* ``adaptive``: anomalib's F1-adaptive threshold (the score that maximises F1 on the validation images; it needs
  defects in the validation split);
* ``percentile``: the ``q``-th percentile of the validation split's *normal* scores (no defects needed; targets a
  false-alarm rate of about ``1 − q/100``).

Pixel AUROC is computed on maps and masks resized to at most ``PIXEL_SIZE`` pixels a side (area / nearest), which
keeps it cheap on hundreds of images; categories without masks have none (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics.threshold.f1_adaptive_threshold import _F1AdaptiveThreshold
from anomalib.models import AnomalibModule
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import DataLoader

PIXEL_SIZE = 128


@dataclass
class Predictions:
    """Image scores ``(N,)``, labels ``(N,)``; maps and masks ``(N, h, w)`` (``masks`` None without any mask)."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None


def _small(tensor: torch.Tensor, mode: str) -> torch.Tensor:
    """``(N, H, W)`` → at most ``PIXEL_SIZE`` a side."""
    height, width = tensor.shape[-2:]
    scale = PIXEL_SIZE / max(height, width)
    if scale >= 1:
        return tensor
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(tensor[:, None].float(), size=size, mode=mode)[:, 0]


@torch.no_grad()
def predict(model: AnomalibModule, dataloader: DataLoader) -> Predictions:
    """Run the torch model (its pre-processing, no post-processing) over ``dataloader``."""
    model.eval()
    transform = getattr(model.pre_processor, "transform", None)
    scores, labels, maps, masks = [], [], [], []
    has_mask = False
    for batch in dataloader:
        images = transform(batch.image) if transform is not None else batch.image
        output = model.model(images.to(model.device))
        scores.append(output.pred_score.detach().cpu().reshape(-1).double())
        labels.append(batch.gt_label.cpu().reshape(-1).long())
        maps.append(_small(output.anomaly_map.detach().cpu().reshape(len(images), *images.shape[-2:]), "area"))
        mask = batch.gt_mask
        if mask is not None and mask.numel():
            has_mask = has_mask or bool(mask.any())
            masks.append(_small(mask.cpu().reshape(len(images), *mask.shape[-2:]).float(), "nearest") > 0.5)
        else:
            masks.append(torch.zeros_like(maps[-1], dtype=torch.bool))
    return Predictions(
        scores=torch.cat(scores).numpy(), labels=torch.cat(labels).numpy(),
        maps=torch.cat(maps).numpy().astype(np.float32), masks=torch.cat(masks).numpy() if has_mask else None,
    )


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC; NaN when only one class is present."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan


def pixel_auroc(predictions: Predictions) -> float:
    """AUROC over all pixels of all images (NaN without masks)."""
    if predictions.masks is None:
        return math.nan
    return auroc(predictions.masks.reshape(-1), predictions.maps.reshape(-1))


def adaptive_threshold(validation: Predictions) -> float:
    """anomalib's F1-adaptive threshold on the validation scores."""
    metric = _F1AdaptiveThreshold()
    return float(metric(torch.from_numpy(validation.scores), torch.from_numpy(validation.labels)))


def percentile_threshold(validation: Predictions, q: float) -> float:
    """``q``-th percentile of the validation split's normal scores."""
    normal = validation.scores[validation.labels == 0]
    if not len(normal):
        return math.nan
    return float(np.percentile(normal, q))


def at_threshold(predictions: Predictions, threshold: float) -> dict[str, float]:
    """F1, precision, recall and false-alarm rate (share of normal images flagged) of ``score > threshold``."""
    predicted = predictions.scores > threshold
    truth = predictions.labels == 1
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    normals = int((~truth).sum())
    return {"f1": f1, "precision": precision, "recall": recall,
            "false_alarm_rate": fp / normals if normals else math.nan, "threshold": threshold}


def evaluate(validation: Predictions, test: Predictions, percentile: float) -> dict[str, float]:
    """Validation image AUROC (the selection criterion) and the test metrics of the study."""
    adaptive = at_threshold(test, adaptive_threshold(validation))
    fixed = at_threshold(test, percentile_threshold(validation, percentile))
    metrics = {"val_image_auroc": auroc(validation.labels, validation.scores),
               "image_auroc": auroc(test.labels, test.scores), "pixel_auroc": pixel_auroc(test)}
    metrics.update({f"adaptive_{k}": v for k, v in adaptive.items()})
    metrics.update({f"percentile_{k}": v for k, v in fixed.items()})
    return metrics


def roc_points(predictions: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Test ROC curve ``(fpr, tpr)``."""
    fpr, tpr, _ = roc_curve(predictions.labels, predictions.scores)
    return fpr, tpr
