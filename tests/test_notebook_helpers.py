"""The notebooks' study helpers: the validation-only choice, and a failed fit that stops the notebook."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from anomalib.data import MVTecAD

from anomalib_simplenet.experiments.notebook import best_on_validation, fit_study_model, prepare_data


def test_best_on_validation_uses_validation_auroc_only() -> None:
    table = {
        "teacher": {"val_image_auroc": 0.80, "image_auroc": 0.99},
        "distill": {"val_image_auroc": 0.90, "image_auroc": 0.70},
        "scratch": {"val_image_auroc": 0.90, "image_auroc": 0.95},
    }
    assert best_on_validation(table) == "distill"  # highest validation AUROC; tie goes to the first listed


def test_best_on_validation_breaks_ties_by_validation_pixel_auroc() -> None:
    table = {
        "teacher": {"val_image_auroc": 1.0, "val_pixel_auroc": 0.90, "pixel_auroc": 0.99},
        "distill": {"val_image_auroc": 1.0, "val_pixel_auroc": 0.95, "pixel_auroc": 0.50},
    }
    assert best_on_validation(table) == "distill"


def test_best_on_validation_never_picks_nan() -> None:
    table = {"unet_ae": {"val_image_auroc": math.nan}, "teacher": {"val_image_auroc": 0.5}}
    assert best_on_validation(table) == "teacher"


def test_fit_study_model_raises_on_a_failed_fit(tmp_path: Path) -> None:
    root, category = prepare_data("synthetic", tmp_path, tmp_path, n_train=4, image_size=32)
    datamodule = MVTecAD(root=root, category=category, train_batch_size=4, eval_batch_size=4, num_workers=0,
                         val_split_mode="from_test", val_split_ratio=0.5, seed=0)
    with pytest.raises(RuntimeError, match="teacher/notebook"):
        fit_study_model("teacher", datamodule, tmp_path / "run", 32, teacher="no_such_network", epochs=1)
    assert (tmp_path / "run" / "error.txt").is_file()
