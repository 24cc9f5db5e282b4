"""The distillation study's parts: teacher reference, thresholds, settings, FLOPs, options (the whole study at
tiny size: ``test_study_run.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from anomalib_simplenet.lab.fit import overfitting_note
from anomalib_simplenet.lab.flops import forward_flops
from anomalib_simplenet.lab.scores import Predictions, at_threshold, evaluate, percentile_threshold, validation_rank
from anomalib_simplenet.lab.settings import Setting
from anomalib_simplenet.models.teacher_mahalanobis import TeacherMahalanobisModel
from anomalib_simplenet.study import cli
from anomalib_simplenet.study.candidates import mask_contrast
from anomalib_simplenet.study.settings import KIND_CLASSES, KIND_TITLES, model_class, resolve_init_args, study_settings

from .conftest import REPO_ROOT


def test_flops_of_a_convolution_and_a_linear_layer_follow_the_formula() -> None:
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # A multiply-add counts as 2 FLOPs: 2 × C_out × C_in × k × k per output position (bias not counted).
    assert forward_flops(conv, (16, 20)) == 2 * 8 * 3 * 3 * 3 * 16 * 20
    strided = torch.nn.Sequential(torch.nn.Conv2d(3, 4, kernel_size=2, stride=2), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 8 * 8, 5))
    assert forward_flops(strided, (16, 16)) == 2 * 4 * 3 * 2 * 2 * 8 * 8 + 2 * 4 * 8 * 8 * 5
    strided.train()
    forward_flops(strided, (16, 16))
    assert strided.training  # the mode is restored
    with pytest.raises(ValueError, match="input_size"):
        forward_flops(conv, (0, 16))


def test_teacher_option_is_an_alias_of_teachers() -> None:
    assert cli.parser().parse_args(["--out", "x", "--teacher", "inception_v3"]).teachers == ["inception_v3"]
    two = cli.parser().parse_args(["--out", "x", "--teachers", "inception_v3", "efficientnet_lite0"])
    assert two.teachers == ["inception_v3", "efficientnet_lite0"]


def test_teacher_reference_scores_a_changed_image_higher() -> None:
    torch.manual_seed(0)
    model = TeacherMahalanobisModel("resnet18", [1, 2], (64, 64), pre_trained=False).eval()
    normal = torch.randn(12, 3, 64, 64) * 0.1
    model.fit(model.features(normal))
    defective = normal[:2].clone()
    defective[:, :, 20:40, 20:40] += 3.0
    output = model(torch.cat([normal[:2], defective]))
    assert output.anomaly_map.shape == (4, 1, 64, 64)
    assert (output.pred_score[2:] > output.pred_score[:2].max()).all()
    corner, centre = output.anomaly_map[2, 0, :8, :8].mean(), output.anomaly_map[2, 0, 26:34, 26:34].mean()
    assert centre > corner


def test_teacher_reference_holds_and_runs_only_the_blocks_its_levels_need() -> None:
    """EfficientNet up to stride 8 (level 2): 3 of 7 blocks, the same feature maps as the whole network's."""
    torch.manual_seed(0)
    model = TeacherMahalanobisModel("efficientnet_lite0", [2], (64, 64), pre_trained=False).eval()
    assert len(model.network.blocks) == 3
    whole = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=[2]).eval()
    whole.load_state_dict(model.network.state_dict(), strict=False)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.features(images)[0], whole(images)[0])
    assert sum(p.numel() for p in model.network.parameters()) < sum(p.numel() for p in whole.parameters()) / 5


def test_thresholds_are_fixed_on_validation_and_report_false_alarms() -> None:
    validation = Predictions(np.array([1.0, 2.0, 3.0, 4.0, 10.0, 11.0]), np.array([0, 0, 0, 0, 1, 1]),
                             np.zeros((6, 2, 2), np.float32), None)
    test = Predictions(np.array([0.5, 3.5, 5.0, 12.0]), np.array([0, 0, 1, 1]), np.zeros((4, 2, 2), np.float32), None)
    assert percentile_threshold(validation, 75) == pytest.approx(3.25)
    result = at_threshold(test, 3.25)
    assert result["false_alarm_rate"] == 0.5 and result["recall"] == 1.0 and result["f1"] == pytest.approx(0.8)
    metrics = evaluate(validation, test, 75)
    assert metrics["val_image_auroc"] == 1.0 and math.isnan(metrics["pixel_auroc"])
    assert 4.0 <= metrics["adaptive_threshold"] <= 10.0  # between the normal and defective validation scores
    assert metrics["adaptive_false_alarm_rate"] == 0.0


def test_validation_pixel_auroc_is_computed_where_validation_has_masks() -> None:
    masks = np.zeros((4, 2, 2), bool)
    masks[2:, 0, 0] = True
    maps = np.zeros((4, 2, 2), np.float32)
    maps[2:, 0, 0], maps[3, 1, 1] = 5.0, 6.0  # one normal pixel above the defects: 1 of 2×14 pairs misordered
    validation = Predictions(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1]), maps, masks)
    test = Predictions(np.array([1.0, 2.0]), np.array([0, 1]), np.zeros((2, 2, 2), np.float32), None)
    assert evaluate(validation, test, 75)["val_pixel_auroc"] == pytest.approx(1 - 2 / 28)
    assert math.isnan(evaluate(Predictions(validation.scores, validation.labels, maps, None), test, 75)
                      ["val_pixel_auroc"])


def test_validation_rank_breaks_image_ties_by_pixel_auroc_and_skips_nan() -> None:
    tied = [{"val_image_auroc": 1.0, "val_pixel_auroc": 0.90}, {"val_image_auroc": 1.0, "val_pixel_auroc": 0.95}]
    assert max(range(2), key=lambda i: validation_rank([tied[i]])) == 1
    better_image = {"val_image_auroc": 0.99, "val_pixel_auroc": 0.99}
    assert validation_rank([better_image]) < validation_rank([tied[0]])  # image AUROC decides first
    two_categories = [{"val_image_auroc": 0.8, "val_pixel_auroc": math.nan}, {"val_image_auroc": 0.6}]
    assert validation_rank(two_categories) == (pytest.approx(0.7), -math.inf)
    assert validation_rank([{"val_image_auroc": math.nan}]) == (-math.inf, -math.inf)


def test_mask_contrast_averages_the_map_inside_and_outside_the_defects() -> None:
    maps = np.zeros((3, 2, 2), np.float32)
    maps[1] = [[4.0, 1.0], [1.0, 1.0]]
    maps[2] = [[9.0, 9.0], [9.0, 9.0]]  # a normal image: not counted
    masks = np.zeros((3, 2, 2), bool)
    masks[1, 0, 0] = True
    test = Predictions(np.zeros(3), np.array([0, 1, 0]), maps, masks)
    assert mask_contrast(test) == {"map_in_mask": 4.0, "map_outside_mask": 1.0}
    assert all(math.isnan(v) for v in mask_contrast(Predictions(np.zeros(3), np.array([0, 1, 0]), maps, None)).values())


def test_overfitting_note_reads_the_curves() -> None:
    rising = [{"epoch": e, "train_loss": 1 / e, "val_loss": v} for e, v in enumerate([1.0, 0.5, 0.6, 0.7], 1)]
    assert overfitting_note(rising, 2).startswith("over-fits after epoch 2")
    falling = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e} for e in range(1, 4)]
    assert overfitting_note(falling, 3).startswith("validation loss still falling")
    jumpy = [{"epoch": e, "train_loss": t, "val_loss": v} for e, t, v in ((1, 2.0, 1.7), (2, 1.5, 1.6), (3, 1.6, 3.0))]
    assert "unstable training" in overfitting_note(jumpy, 2)
    flat = [{"epoch": e, "train_loss": 1 / e, "val_loss": v} for e, v in ((1, 1.0), (2, 0.5), (3, 0.52))]
    assert "converged" in overfitting_note(flat, 2)


def test_settings_read_the_overlays_and_pass_the_teacher(tmp_path: Path) -> None:
    settings = study_settings(REPO_ROOT / "configs" / "study.yaml")
    kinds = [s.kind for s in settings]
    assert all(kinds.count(k) >= 3 for k in ("teacher", "scratch", "distill", "unet_ae"))
    for setting in settings:  # every setting builds its model (random weights: construction only)
        model = model_class(setting.kind)(**resolve_init_args(setting, 64, "resnet18", False, None))
        assert model.input_size == (64, 64)
    for setting in study_settings(REPO_ROOT / "configs" / "study_magnetic_tile.yaml", list(KIND_TITLES)):
        model = model_class(setting.kind)(**resolve_init_args(setting, 64, "efficientnet_lite0", False, None))
        assert model.input_size == (64, 64) and type(model).__name__ == KIND_CLASSES[setting.kind]
    simplenet = resolve_init_args(Setting("x", kind="simplenet"), 64, "efficientnet_lite1", True)
    assert simplenet == {"image_size": 64, "backbone": "efficientnet_lite1", "pre_trained": True}
    with pytest.raises(ValueError, match="unknown kind"):
        study_settings(REPO_ROOT / "configs" / "study.yaml", ["no_such_kind"])
    teacher = next(s for s in settings if s.kind == "teacher")
    args = resolve_init_args(teacher, 96, "efficientnet_lite0", pre_trained=True)
    assert args["backbone"] == "efficientnet_lite0" and args["image_size"] == 96 and args["pre_trained"]
    distill = Setting("x", kind="distill", arguments={"teacher_backbone": "efficientnet_lite0"})
    assert resolve_init_args(distill, 64, "efficientnet_lite1", True)["teacher_backbone"] == "efficientnet_lite1"
    scratch = Setting("x", kind="scratch", arguments={"teacher_backbone": "efficientnet_lite0"})
    assert "teacher_backbone" not in resolve_init_args(scratch, 64, "efficientnet_lite1", True)
    lr = next(s for s in settings if s.label == "distill/lr3e-4")  # the CLI overlay's value, then the shared ones
    assert lr.init_args == {"learning_rate": 0.0003, "image_score": "map_max"}
    (tmp_path / "bad.yaml").write_text("nonsense: {settings: {x: {}}}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        study_settings(tmp_path / "bad.yaml")
    (tmp_path / "missing.yaml").write_text("teacher: {settings: {x: no_such_overlay.yaml}}\n")
    with pytest.raises(FileNotFoundError, match="no_such_overlay"):
        study_settings(tmp_path / "missing.yaml", ["teacher"])


def test_outcome_says_not_measured_when_a_model_is_missing() -> None:
    from anomalib_simplenet.study.report import hypothesis_checks

    teacher = {"category": "c", "scope": "c", "kind": "teacher", "teacher": "t0", "image_auroc": 0.9}
    scratch = {**teacher, "kind": "scratch", "teacher": None, "image_auroc": 0.7}
    results = {"main_category": "c", "main": [teacher, scratch], "cost": [], "dbscan": {},
               "context": {"teachers": ["t0"]}}
    checks = {c["check"]: c for c in hypothesis_checks(results)}
    gap = checks["t0: distilled student vs teacher-feature reference (image AUROC, points)"]
    assert gap["met"] is None and gap["value"] is None and "not run" in gap["detail"]
    assert checks["t0: CPU latency ratio teacher / distilled (torch FP32, batch 1, median)"]["met"] is None
    assert checks["INT8_PTQ of the best model"]["met"] is None


def test_data_note_says_whether_a_real_category_was_subsampled(synthetic_root: Path, tmp_path: Path) -> None:
    from anomalib_simplenet.lab.data import prepare_categories

    _, notes = prepare_categories(synthetic_root, ["synthetic"], tmp_path / "all", None, None)
    assert notes == [f"synthetic: {synthetic_root / 'synthetic'} (all training images, all test images)"]
    _, notes = prepare_categories(synthetic_root, ["synthetic"], tmp_path / "some", 8, 6)
    assert notes == [f"synthetic: {synthetic_root / 'synthetic'} (≤8 training images, ≤2 test images per sub-folder)"]
    assert len(list((tmp_path / "some" / "synthetic" / "train" / "good").iterdir())) == 8
