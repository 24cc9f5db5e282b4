"""A fitted setting of the study (:class:`Candidate`), how it ranks on validation and its record in results.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from anomalib_simplenet.lab.fit import FitResult, overfitting_note
from anomalib_simplenet.lab.scores import Predictions, validation_rank
from anomalib_simplenet.lab.settings import Setting

from .settings import KIND_TITLES


@dataclass
class Candidate:
    """A fitted setting, its metrics and ROC points per category and (while it may still be chosen) its model."""

    setting: Setting
    scope: str
    fit: FitResult
    teacher: str | None = None  # the teacher network of kinds that use one
    init_args: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    roc: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    wall_s: float = math.nan  # fit and evaluation

    @property
    def key(self) -> str:
        """The model this is a setting of: the kind, with its teacher network (``distill@inception_v3``)."""
        return f"{self.setting.kind}@{self.teacher}" if self.teacher else self.setting.kind

    @property
    def label(self) -> str:
        """``distill/lr1e-3 (inception_v3)``."""
        return f"{self.setting.label} ({self.teacher})" if self.teacher else self.setting.label

    @property
    def title(self) -> str:
        """``DistillClassifier distilled (inception_v3)``."""
        return f"{KIND_TITLES[self.setting.kind]} ({self.teacher})" if self.teacher else KIND_TITLES[self.setting.kind]

    @property
    def selection_score(self) -> tuple[float, float]:
        """Validation image AUROC, then pixel AUROC, each the mean over the categories it was evaluated on
        (:func:`~anomalib_simplenet.lab.scores.validation_rank`)."""
        return validation_rank(self.metrics.values())


def mask_contrast(test: Predictions) -> dict[str, float]:
    """Mean raw anomaly-map value inside and outside the defect masks of the defective test images (NaN without
    masks): how much of the map's response lands on the defects."""
    defective = test.labels == 1
    if test.masks is None or not test.masks[defective].any():
        return {"map_in_mask": math.nan, "map_outside_mask": math.nan}
    maps, masks = test.maps[defective], test.masks[defective].astype(bool)
    return {"map_in_mask": float(maps[masks].mean()), "map_outside_mask": float(maps[~masks].mean())}


def finite_or_nan(value: float) -> float:
    """``value``, or NaN for ±inf (JSON has neither)."""
    return value if math.isfinite(value) else math.nan


def run_record(candidate: Candidate, chosen: bool) -> dict[str, Any]:
    fit = candidate.fit
    image_rank, pixel_rank = candidate.selection_score
    return {
        "kind": candidate.setting.kind, "teacher": candidate.teacher, "title": candidate.title,
        "setting": candidate.setting.name, "scope": candidate.scope,
        "status": fit.status, "error": fit.error, "epochs": len(fit.history), "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best_val_loss, "fit_s": fit.fit_s, "wall_s": candidate.wall_s,
        "weights": candidate.weights, "chosen": chosen,
        "selection_val_image_auroc": finite_or_nan(image_rank),
        "selection_val_pixel_auroc": finite_or_nan(pixel_rank),
        "overfitting": overfitting_note(fit.history, fit.best_epoch) if fit.status == "ok" else "",
        "init_args": {k: v for k, v in candidate.init_args.items() if k != "categories"},
        "history": fit.history, "run_dir": str(fit.run_dir), "metrics": candidate.metrics,
    }
