"""Validation of DistillClassifier's constructor arguments and defaults of its loss weights."""

from __future__ import annotations

from typing import Any

from .tasks import check_num_transforms
from .torch_model import check_image_score, check_map_layers

MODES = ("scratch", "distill")
THRESHOLD_MODES = ("f1_adaptive", "percentile")


def default_weight(value: float | None, default: float) -> float:
    """``value`` as a float, or ``default`` when it is ``None``."""
    return default if value is None else float(value)


def check_arguments(arguments: dict[str, Any]) -> None:
    """Clear errors for invalid constructor arguments (named as in the signature)."""
    mode = arguments["mode"]
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    if arguments["threshold_mode"] not in THRESHOLD_MODES:
        msg = f"threshold_mode must be one of {THRESHOLD_MODES}, got {arguments['threshold_mode']!r}"
        raise ValueError(msg)
    for name in ("feature_weight", "classification_weight", "soft_label_weight", "weight_decay"):
        if arguments[name] is not None and arguments[name] < 0:
            msg = f"{name} must be >= 0, got {arguments[name]}"
            raise ValueError(msg)
    for name in ("learning_rate", "temperature"):
        if arguments[name] <= 0:
            msg = f"{name} must be > 0, got {arguments[name]}"
            raise ValueError(msg)
    if mode == "scratch" and arguments["soft_label_weight"]:
        msg = "soft_label_weight needs a teacher: use mode='distill' or soft_label_weight=0"
        raise ValueError(msg)
    if mode == "scratch" and arguments["classification_weight"] == 0:
        msg = "classification_weight must be > 0 in mode='scratch' (it is the only training signal)"
        raise ValueError(msg)
    if not 0 < arguments["threshold_percentile"] <= 100:
        msg = f"threshold_percentile must be in (0, 100], got {arguments['threshold_percentile']}"
        raise ValueError(msg)
    if not 0 <= arguments["holdout_fraction"] < 1:
        msg = f"holdout_fraction must be in [0, 1), got {arguments['holdout_fraction']}"
        raise ValueError(msg)
    check_num_transforms(arguments["num_transforms"])
    check_map_layers(arguments["map_layers"])
    check_image_score(arguments["image_score"])
    categories = arguments["categories"]
    if categories is not None and (isinstance(categories, str) or len(set(categories)) != len(categories)):
        msg = f"categories must be a list of unique names, got {categories!r}"
        raise ValueError(msg)
