"""The distillation study end to end at tiny size, and its parts (teacher reference, thresholds, settings)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from anomalib_simplenet.study import cli
from anomalib_simplenet.lab.fit import overfitting_note
from anomalib_simplenet.lab.report import fmt
from anomalib_simplenet.lab.scores import Predictions, at_threshold, evaluate, percentile_threshold
from anomalib_simplenet.lab.settings import Setting
from anomalib_simplenet.study.settings import model_class, resolve_init_args, study_settings
from anomalib_simplenet.models.teacher_mahalanobis import TeacherMahalanobisModel

from .conftest import REPO_ROOT


def _table(markdown: str, first_header: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header starts with ``| first_header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two generated categories, two settings per model, one epoch, random teacher (plumbing only)."""
    out = tmp_path_factory.mktemp("study")
    empty_root = tmp_path_factory.mktemp("no_data")  # categories missing here are generated
    status = cli.main([
        "--out", str(out), "--categories", "synth_a", "synth_b", "--data-root", str(empty_root),
        "--settings", str(REPO_ROOT / "configs" / "study.yaml"), "--teacher", "resnet18", "--random-teacher",
        "--image-size", "64", "--max-train", "12", "--max-test", "18", "--max-epochs", "1",
        "--settings-per-model", "2", "--batch-size", "8", "--quantize-top", "1", "--throughput-seconds", "0.1",
        "--dbscan-min-samples", "3", "--threads", "1",
    ])
    assert status == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_every_model_kind_is_fitted_per_category_and_on_all_categories(study: tuple[Path, dict]) -> None:
    _, results = study
    fitted = {(r["scope"], r["kind"]) for r in results["runs"] if r["status"] == "ok"}
    for scope in ("synth_a", "synth_b"):
        assert {(scope, k) for k in ("teacher", "scratch", "distill", "unet_ae")} <= fitted
    assert {("all", "scratch"), ("all", "distill")} <= fitted
    assert ("all", "teacher") not in fitted
    assert len(results["runs"]) == 2 * 8 + 4  # two settings of 4 kinds per category, 2 of 2 kinds on all
    trained = [r for r in results["runs"] if r["kind"] != "teacher"]
    assert all(r["epochs"] == 1 and math.isfinite(r["best_val_loss"]) for r in trained)


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_chosen_setting_is_the_best_on_validation_never_test(study: tuple[Path, dict]) -> None:
    _, results = study
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in results["runs"]:
        groups.setdefault((run["scope"], run["kind"]), []).append(run)
    for runs in groups.values():
        chosen = [r for r in runs if r["chosen"]]
        assert len(chosen) == 1
        assert chosen[0]["selection_val_image_auroc"] == max(r["selection_val_image_auroc"] for r in runs)
        for row in (m for m in results["main"] if m["scope"] == chosen[0]["scope"] and m["kind"] == chosen[0]["kind"]):
            assert row["setting"] == chosen[0]["setting"]
            assert row["image_auroc"] == chosen[0]["metrics"][row["category"]]["image_auroc"]


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_report_tables_come_from_the_run(study: tuple[Path, dict]) -> None:
    out, results = study
    report = (out / "report.md").read_text()
    main = _table(report, "category")
    assert len(main) == len(results["main"]) == 2 * 4 + 2 * 2
    for cells, row in zip(main, results["main"], strict=True):
        assert cells[0] == row["category"] and cells[3] == row["setting"]
        # Raw-score metrics first, each with its normalised twin and the difference beside it.
        assert cells[4:6] == [fmt(row["val_image_auroc"]), fmt(row["image_auroc"])]
        assert cells[6] == fmt(row["image_auroc_normalised"]) and cells[8] == fmt(row["pixel_auroc"])
        assert cells[9] == fmt(row["pixel_auroc_normalised"])
        assert cells[11] == f"{fmt(row['adaptive_f1'])} ({fmt(row['adaptive_false_alarm_rate'], '.3f')})"
    cost = _table(report, "model")
    assert [c[0] for c in cost] == [c["label"] for c in results["cost"]]
    for cells, entry in zip(cost, results["cost"], strict=True):
        torch_fp32 = entry["records"][0]
        assert torch_fp32["variant"] == "torch FP32" and torch_fp32["status"] == "ok"
        assert cells[1] == f"{entry['parameters']:,}"
        assert cells[3].startswith(fmt(torch_fp32["latency_ms_median"], ".2f"))
    quantized = [c for c in results["cost"] if c["quantized"]]
    assert len(quantized) == 1
    variants = [r["variant"] for r in quantized[0]["records"]]
    assert variants == ["torch FP32", "OpenVINO FP32", "OpenVINO FP16", "OpenVINO INT8", "OpenVINO INT8_PTQ"]
    outcome = _table(report, "check")
    assert [c[0] for c in outcome] == [c["check"] for c in results["hypothesis"]]
    assert [c[2] for c in outcome] == [fmt(c["value"], ".2f") for c in results["hypothesis"]]
    assert "RANDOM weights" in report


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_run_folder_keeps_every_step(study: tuple[Path, dict]) -> None:
    out, results = study
    for run in results["runs"]:
        if run["kind"] != "teacher":
            assert (Path(run["run_dir"]) / "history.csv").is_file()
            assert (Path(run["run_dir"]) / "loss_curve.png").is_file()
            assert run["overfitting"] == "one epoch only: no trend to read; checkpoint of epoch 1 kept"
    for category in ("synth_a", "synth_b"):
        assert (out / "figures" / f"roc_{category}.png").is_file()
        assert (out / "figures" / f"reconstructions_{category}.png").is_file()
    assert set(results["dbscan"]) >= {"pca", "tsne"}
    for space in ("pca", "tsne"):
        assert 0 <= results["dbscan"][space]["metrics"]["f1"] <= 1
        assert (out / "dbscan" / space / f"dbscan_{space}.png").is_file()
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]*)"', html)
    assert len(images) == (out / "report.md").read_text().count("![") and all(images)


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

    teacher = {"category": "c", "scope": "c", "kind": "teacher", "image_auroc": 0.9}
    scratch = {**teacher, "kind": "scratch", "image_auroc": 0.7}
    results = {"main_category": "c", "main": [teacher, scratch], "cost": [], "dbscan": {}}
    checks = {c["check"]: c for c in hypothesis_checks(results)}
    gap = checks["distilled student vs teacher-feature reference (image AUROC, points)"]
    assert gap["met"] is None and gap["value"] is None and "not run" in gap["detail"]
    assert checks["CPU latency ratio teacher / distilled (torch FP32, batch 1, median)"]["met"] is None
    assert checks["INT8_PTQ of the best model"]["met"] is None


def test_data_note_says_whether_a_real_category_was_subsampled(synthetic_root: Path, tmp_path: Path) -> None:
    from anomalib_simplenet.lab.data import prepare_categories

    _, notes = prepare_categories(synthetic_root, ["synthetic"], tmp_path / "all", None, None)
    assert notes == [f"synthetic: {synthetic_root / 'synthetic'} (all training images, all test images)"]
    _, notes = prepare_categories(synthetic_root, ["synthetic"], tmp_path / "some", 8, 6)
    assert notes == [f"synthetic: {synthetic_root / 'synthetic'} (≤8 training images, ≤2 test images per sub-folder)"]
    assert len(list((tmp_path / "some" / "synthetic" / "train" / "good").iterdir())) == 8
