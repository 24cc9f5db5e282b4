"""Measure a variant: batch-1 latency and accuracy on the raw test images, throughput at a larger batch."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from anomalib.metrics import AUROC, F1Score
from tqdm import tqdm

from anomalib_simplenet.components.resize import antialiased_resize
from anomalib_simplenet.deploy.quantization import prediction_from_outputs

from .data import TestSample
from .runtime import Runner


@dataclass
class Measurement:
    """What one variant scored and how fast it ran; ``scores`` are its normalised image scores, in test order."""

    latency_ms_median: float
    latency_ms_p95: float
    throughput_ips: float
    image_auroc: float
    pixel_auroc: float
    image_f1: float
    scores: list[float] = field(default_factory=list)


def _metrics() -> dict[str, AUROC | F1Score]:
    """The metrics of anomalib's default evaluator (same fields), one instance per measurement."""
    return {
        "image_auroc": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_auroc": AUROC(fields=["anomaly_map", "gt_mask"]),
        "image_f1": F1Score(fields=["pred_label", "gt_label"]),
    }


def percentile(values: list[float], q: float) -> float:
    """``q``-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values), q))


def evaluate(runner: Runner, samples: list[TestSample], warmup: int, label: str) -> tuple[dict, list[float], list]:
    """Run every test image alone (batch 1, original size), timing each call after ``warmup`` untimed calls.

    Returns:
        metric values by name, per-image latencies (ms), normalised scores.
    """
    for _ in range(warmup):
        runner(samples[0].image[None])
    metrics = _metrics()
    latencies, scores = [], []
    for sample in tqdm(samples, desc=f"{label}: test images", leave=False, mininterval=2.0):
        image = sample.image[None]
        start = time.perf_counter()
        outputs = runner(image)
        latencies.append((time.perf_counter() - start) * 1e3)
        prediction = prediction_from_outputs(outputs, sample.label, sample.mask)
        for metric in metrics.values():
            metric.update(prediction)
        scores.append(float(prediction.pred_score))
    return {name: float(metric.compute()) for name, metric in metrics.items()}, latencies, scores


def throughput(
    runner: Runner,
    samples: list[TestSample],
    size: tuple[int, int],
    batch_size: int,
    seconds: float,
) -> float:
    """Images per second on batches of ``batch_size`` test images resized to ``size`` (the model's input size,
    so one batch holds images of any original size); one warm-up batch, then batches for ≥ ``seconds``."""
    images = torch.stack([antialiased_resize(s.image, size) for s in samples[:batch_size]])
    while len(images) < batch_size:  # fewer test images than the batch: repeat them
        images = torch.cat([images, images])[:batch_size]
    runner(images)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        runner(images)
        done += batch_size
    return done / (time.perf_counter() - start)


def measure(
    runner: Runner,
    samples: list[TestSample],
    input_size: tuple[int, int],
    label: str,
    warmup: int = 3,
    batch_size: int = 8,
    throughput_seconds: float = 5.0,
) -> Measurement:
    """Latency and accuracy (batch 1, raw images) and throughput (``batch_size``) of one variant."""
    metrics, latencies, scores = evaluate(runner, samples, warmup, label)
    return Measurement(
        latency_ms_median=statistics.median(latencies),
        latency_ms_p95=percentile(latencies, 95),
        throughput_ips=throughput(runner, samples, input_size, batch_size, throughput_seconds),
        scores=scores,
        **metrics,
    )
