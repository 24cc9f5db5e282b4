"""One model of a comparison (SimpleNet or an anomalib peer on the same weights), fitted, tested and scored."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .data import datamodule
from .fit import fit
from .peers import build, shared_weights
from .scores import raw_metrics
from .weights import parse_weights

TEST_METRICS = ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score", "pixel_AUPRO")
# Logged by SimpleNet per epoch: the basis of its epoch default.
HISTORY_KEYS = ("p_normal_epoch", "p_noised_epoch")


def evaluator(with_aupro: bool) -> Any:
    """anomalib's default test metrics, plus AUPRO when asked."""
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

    metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
               F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
               AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
               F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False)]
    if with_aupro:
        metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    return Evaluator(test_metrics=metrics)


def fit_and_score(
    name: str, root: str, category: str, output: str, backbone: str, weights: str, image_size: int, epochs: int,
    seed: int = 0, batch: int = 8, num_workers: int = 0, aupro: bool = False, resize_shorter_side: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fit ``name`` on the shared ``weights`` of ``backbone``, test and score it: ``Engine.test``'s metrics and
    :func:`.scores.metrics` in one row. JSON arguments only (for :func:`.isolated.run_isolated`); ``options`` go to
    :func:`.peers.build`."""
    output_dir = Path(output)
    shared = shared_weights(backbone, parse_weights(weights), seed, output_dir)
    data = datamodule(Path(root), category, batch_size=batch, seed=seed, eval_batch_size=16, num_workers=num_workers)
    torch.manual_seed(seed)
    model, note = build(name, shared, image_size, epochs, resize_shorter_side, evaluator=evaluator(aupro), **options)
    result = fit(name, model, data, output_dir / "runs" / name, epochs, test=True, seed=seed,
                 history_keys=HISTORY_KEYS)
    if result.status != "ok":
        return {"error": result.error}
    row = {key: result.metrics[key] for key in TEST_METRICS if key in result.metrics}
    row.update(raw_metrics(model, data.test_dataloader(), with_aupro=aupro))
    row.update(fit_s=result.fit_s, test_images_per_s=len(data.test_data) / result.test_s, epochs=len(result.epochs),
               note=note, weights=shared.source)
    per_epoch = [{k: round(v, 4) for k, v in r.items() if k != "epoch"} for r in result.history]
    if any(not math.isnan(r.get("val_loss", math.nan)) for r in per_epoch):
        row["per_epoch"] = per_epoch
    return row
