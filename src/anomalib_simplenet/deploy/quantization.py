"""NNCF INT8 quantization (PTQ and accuracy-controlled) of an exported OpenVINO model, calibrated on a datamodule.

Same algorithms as anomalib 2.7's ``ExportMixin`` (``nncf.quantize`` / ``nncf.quantize_with_accuracy_control``
on the validation split), without its problems:

* the score-map projection and the anomaly-map post-processing (one-channel maps) were quantized too: SimpleNet's
  scores moved by up to 0.5 and OpenVINO's CPU plugin computed its quantized map as zeros or could not compile
  it; they now stay in float (:func:`map_ops_scope`);

* a static export size (``input_size``) that differs from the images the datamodule yields broke calibration
  (OpenVINO rejects the tensor); images are now resized to the static size with the model's own filter;
* anomalib's accuracy-control ``val_fn`` returned a bare tensor where NNCF expects ``(metric, per-item values)``,
  squeezed a last batch of one image to a scalar (shape error), never reset its metric between evaluations,
  and validated on the *test* split. Here validation uses the validation split, one image per item, a fresh
  metric value per call (image AUROC by default), and per-item outputs so NNCF ranks layers by output change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from anomalib_simplenet.components.resize import antialiased_resize

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from anomalib.metrics import AnomalibMetric

logger = logging.getLogger(__name__)


def static_image_size(ov_model: ov.Model) -> tuple[int, int] | None:
    """``(H, W)`` of the model's image input when both are static, else ``None`` (dynamic export)."""
    shape = ov_model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or not (shape[2].is_static and shape[3].is_static):
        return None
    return shape[2].get_length(), shape[3].get_length()


def fit_to_input(images: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    """Images ``(N, 3, H, W)`` as float32 numpy, resized to a static input ``size`` when they differ from it."""
    images = images.float()
    if size is not None and tuple(images.shape[-2:]) != size:
        images = antialiased_resize(images, size)
    return images.numpy()


def _is_map(shape: Any) -> bool:
    """``(N, 1, H, W)``: a one-channel score or anomaly map, not features."""
    return shape.rank.is_static and shape.rank.get_length() == 4 and shape[1].is_static and shape[1].get_length() == 1


def map_ops_scope(ov_model: ov.Model) -> Any:
    """NNCF ignored scope: every op that reads or produces a one-channel map ``(N, 1, H, W)`` stays in float.

    That is the projection of features to a score map and everything after it (upsampling, Gaussian blur,
    normalisation, threshold): a small share of the compute, and the part that 8 bits break. Measured: OpenVINO's
    CPU plugin ran SimpleNet's quantized upsample + blur as all zeros (every pixel normalised to 1, pixel AUROC
    0.5) or refused to compile it (``ClampTransformation``: min/max NaN); with the final 1024→1 projection in
    int8, SimpleNet's magnetic_tile image scores moved by up to 0.49 (normalised), by 0.025 with it in float.
    """
    import nncf

    names = []
    for op in ov_model.get_ordered_ops():
        reads_map = op.get_input_size() > 0 and _is_map(op.input_value(0).get_partial_shape())
        makes_map = op.get_output_size() == 1 and _is_map(op.get_output_partial_shape(0))
        if reads_map or makes_map:
            names.append(op.get_friendly_name())
    return nncf.IgnoredScope(names=names, validate=False)


def _require(datamodule: AnomalibDataModule | None, what: str) -> AnomalibDataModule:
    if datamodule is None:
        msg = f"{what}: a datamodule is needed (its validation split calibrates the quantization)"
        raise ValueError(msg)
    datamodule.setup("fit")
    return datamodule


def post_training_quantize(ov_model: ov.Model, datamodule: AnomalibDataModule | None) -> ov.Model:
    """INT8 PTQ calibrated on the validation dataloader's images (as anomalib), fitted to a static input size."""
    import nncf

    datamodule = _require(datamodule, "INT8_PTQ")
    size = static_image_size(ov_model)
    calibration = nncf.Dataset(datamodule.val_dataloader(), lambda batch: fit_to_input(batch.image, size))
    return nncf.quantize(ov_model, calibration, ignored_scope=map_ops_scope(ov_model))


@dataclass
class _Prediction:
    """The fields anomalib metrics read (``getattr(batch, field)``), for one image."""

    pred_score: torch.Tensor  # (1,)
    pred_label: torch.Tensor | None  # (1,)
    anomaly_map: torch.Tensor | None  # (1, h, w)
    gt_label: torch.Tensor  # (1,)
    gt_mask: torch.Tensor | None  # (1, h, w), resized (nearest) to the map


def prediction_from_outputs(outputs: dict[str, Any], gt_label: int, gt_mask: torch.Tensor | None) -> _Prediction:
    """Build a one-image metric input from runtime outputs (numpy or torch) and the ground truth."""

    def tensor(name: str) -> torch.Tensor | None:
        value = outputs.get(name)
        return None if value is None else torch.as_tensor(np.asarray(value))

    anomaly_map = tensor("anomaly_map")
    if anomaly_map is not None:
        anomaly_map = anomaly_map.reshape(1, *anomaly_map.shape[-2:]).float()
    if gt_mask is not None and anomaly_map is not None:
        gt_mask = F.interpolate(gt_mask.reshape(1, 1, *gt_mask.shape[-2:]).float(), anomaly_map.shape[-2:])[0] > 0.5
    pred_label = tensor("pred_label")
    return _Prediction(
        pred_score=tensor("pred_score").reshape(1).float(),
        pred_label=None if pred_label is None else pred_label.reshape(1).bool(),
        anomaly_map=anomaly_map,
        gt_label=torch.tensor([gt_label]),
        gt_mask=gt_mask,
    )


def _validation_items(datamodule: AnomalibDataModule, size: tuple[int, int] | None) -> list[tuple]:
    """``(image (1, 3, H, W) numpy, label, mask (H, W) | None)`` for each validation image."""
    items = []
    for index in range(len(datamodule.val_data)):
        item = datamodule.val_data[index]
        items.append((fit_to_input(item.image[None], size), int(item.gt_label), item.gt_mask))
    return items


def accuracy_control_quantize(
    ov_model: ov.Model,
    datamodule: AnomalibDataModule | None,
    metric: AnomalibMetric | None = None,
    max_drop: float = 0.01,
    max_iterations: int = 10,
) -> ov.Model:
    """INT8 PTQ whose accuracy drop on the validation split (``metric``, default image AUROC) is ≤ ``max_drop``.

    NNCF restores layers to float precision, most harmful first, until the drop is within ``max_drop`` or after
    ``max_iterations`` restore steps (each one validates the whole split; NNCF's default is unbounded, which took
    > 15 min for SimpleNet/WRN50 on 60 images without converging). The measured accuracy says which happened.
    """
    import nncf
    from anomalib.metrics import AUROC
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    datamodule = _require(datamodule, "INT8_ACQ")
    if not 0 <= max_drop <= 1:
        msg = f"INT8_ACQ: max_drop must be in [0, 1], got {max_drop}"
        raise ValueError(msg)
    metric = metric if metric is not None else AUROC(fields=["pred_score", "gt_label"])
    size = static_image_size(ov_model)
    items = _validation_items(datamodule, size)
    labels = {label for _, label, _ in items}
    if labels != {0, 1}:
        msg = f"INT8_ACQ: the validation split needs normal and anomalous images (labels found: {sorted(labels)})"
        raise ValueError(msg)

    def validate(compiled: Any, data: Iterable[tuple]) -> tuple[float, list[list[np.ndarray]]]:
        metric.reset()
        per_item = []
        for image, label, mask in data:
            result = compiled(image)
            outputs = {output.any_name: result[output] for output in compiled.outputs}
            metric.update(prediction_from_outputs(outputs, label, mask))
            per_item.append([outputs[name] for name in ("pred_score", "anomaly_map") if name in outputs])
        value = float(metric.compute()) if len(per_item) > 1 else 0.0  # one image has no AUROC (NNCF probes)
        return value, per_item

    dataset = nncf.Dataset(items, lambda item: item[0])  # calibrates, and `validate` gets its raw items
    return nncf.quantize_with_accuracy_control(
        ov_model, dataset, dataset, validate, max_drop=max_drop,
        ignored_scope=map_ops_scope(ov_model),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_iterations, ranking_subset_size=min(len(items), 20),  # ranking: 1 pass per op
        ),
    )
