"""The distillation study end to end at tiny size: split into per-category runs (two random teachers, plumbing
only) and merged into one report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from anomalib_simplenet.lab.report import fmt
from anomalib_simplenet.lab.scores import validation_rank
from anomalib_simplenet.study import cli
from anomalib_simplenet.study.merge import merge_runs

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


TEACHERS = ("resnet18", "efficientnet_lite0")
SPLIT_RUNS = {  # the study split as a long one is: one run per category (a long category split by model kinds), the
    # all-categories classifier on its own
    "synth_a": ["--categories", "synth_a", "--no-all-categories", "--quantize-top", "1"],
    "synth_b": ["--categories", "synth_b", "--no-all-categories", "--quantize-top", "0",
                "--models", "teacher", "distill"],
    "synth_b_rest": ["--categories", "synth_b", "--no-all-categories", "--quantize-top", "0",
                     "--models", "scratch", "unet_ae"],
    "all": ["--categories", "synth_a", "synth_b", "--only-all-categories"],
}


@pytest.fixture(scope="module")
def split_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two generated categories, two settings per model, two random teachers (plumbing only), one epoch: three split
    runs and their merge (key ``merged``)."""
    folders = {name: tmp_path_factory.mktemp(f"study_{name}") for name in SPLIT_RUNS}
    empty_root = tmp_path_factory.mktemp("no_data")  # categories missing here are generated
    for name, options in SPLIT_RUNS.items():
        status = cli.main([
            "--out", str(folders[name]), *options, "--data-root", str(empty_root),
            "--settings", str(REPO_ROOT / "configs" / "study.yaml"), "--teachers", *TEACHERS, "--random-teacher",
            "--image-size", "64", "--max-train", "12", "--max-test", "18", "--max-epochs", "1",
            "--settings-per-model", "2", "--batch-size", "8", "--throughput-seconds", "0.1",
            "--dbscan-min-samples", "3", "--threads", "1",
        ])
        assert status == 0
    folders["merged"] = tmp_path_factory.mktemp("study_merged")
    assert cli.main(["--merge", *(str(folders[name]) for name in SPLIT_RUNS), "--out", str(folders["merged"])]) == 0
    return folders


@pytest.fixture(scope="module")
def study(split_study: dict[str, Path]) -> tuple[Path, dict]:
    """The merged report's folder and results."""
    return split_study["merged"], json.loads((split_study["merged"] / "results.json").read_text())


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_every_model_kind_is_fitted_per_category_and_on_all_categories(study: tuple[Path, dict]) -> None:
    _, results = study
    fitted = {(r["scope"], r["kind"], r["teacher"]) for r in results["runs"] if r["status"] == "ok"}
    models = {("teacher", t) for t in TEACHERS} | {("distill", t) for t in TEACHERS} | {("scratch", None),
                                                                                       ("unet_ae", None)}
    for scope in ("synth_a", "synth_b"):
        assert {(scope, kind, teacher) for kind, teacher in models} <= fitted
    assert {("all", "scratch", None), *(("all", "distill", t) for t in TEACHERS)} <= fitted
    assert not any(kind == "teacher" for scope, kind, _ in fitted if scope == "all")
    # Per category: 2 settings of teacher and distill per teacher, of scratch and unet_ae once; on all: 2 + 2 × 2.
    assert len(results["runs"]) == 2 * (2 * 2 * 2 + 2 * 2) + 2 + 2 * 2
    trained = [r for r in results["runs"] if r["kind"] != "teacher"]
    assert all(r["epochs"] == 1 and math.isfinite(r["best_val_loss"]) for r in trained)


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_chosen_setting_is_the_best_on_validation_never_test(study: tuple[Path, dict]) -> None:
    _, results = study
    groups: dict[tuple[str, str, str | None], list[dict]] = {}
    for run in results["runs"]:
        groups.setdefault((run["scope"], run["kind"], run["teacher"]), []).append(run)
    for model, runs in groups.items():
        chosen = [r for r in runs if r["chosen"]]
        assert len(chosen) == 1
        rank = lambda r: validation_rank([{"val_image_auroc": r["selection_val_image_auroc"],  # noqa: E731
                                           "val_pixel_auroc": r["selection_val_pixel_auroc"]}])
        assert rank(chosen[0]) == max(rank(r) for r in runs)
        for row in (m for m in results["main"] if (m["scope"], m["kind"], m["teacher"]) == model):
            assert row["setting"] == chosen[0]["setting"]
            assert row["image_auroc"] == chosen[0]["metrics"][row["category"]]["image_auroc"]


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_report_tables_come_from_the_run(study: tuple[Path, dict]) -> None:
    out, results = study
    report = (out / "report.md").read_text()
    main = _table(report, "category")
    assert len(main) == len(results["main"]) == 2 * 6 + 2 * 3  # 6 models per category, 3 on all categories
    for cells, row in zip(main, results["main"], strict=True):
        assert cells[0] == row["category"] and cells[1] == row["title"] and cells[3] == row["setting"]
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
        assert cells[1] == f"{entry['parameters']:,}" and cells[2] == fmt(entry["flops"] / 1e9, ".2f")
        assert entry["flops"] > 0 and entry["batch_size"] == 16
        assert cells[4].startswith(fmt(torch_fp32["latency_ms_median"], ".2f"))
        assert cells[5] == f"{fmt(16_000 / torch_fp32['throughput_ips'], '.1f')} (16)"
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
    figures = {Path(path) for path in results["figures"].values()}  # they stay in their split run's folder
    for category in ("synth_a", "synth_b"):
        assert {path.parent.parent.name for path in figures if path.name == f"roc_{category}.png"} == {
            f"study_{name}0" for name, options in SPLIT_RUNS.items() if category in options}
        assert any(path.name == f"reconstructions_{category}.png" for path in figures)
    assert all(path.is_file() for path in figures)
    assert set(results["dbscan"]) >= {"pca", "tsne"}
    for space in ("pca", "tsne"):
        assert 0 <= results["dbscan"][space]["metrics"]["f1"] <= 1
        assert Path(results["dbscan"][space]["files"][0]).parent.parent.parent.name == "study_synth_a0"
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]*)"', html)
    assert len(images) == (out / "report.md").read_text().count("![") and all(images)


@pytest.mark.slow  # runs a whole small study (module fixture)
def test_two_teachers_give_the_reference_and_the_distilled_row_of_each(study: tuple[Path, dict]) -> None:
    _, results = study
    for category in ("synth_a", "synth_b"):
        rows = [r for r in results["main"] if r["category"] == category and r["scope"] == category]
        assert sorted((r["kind"], r["teacher"]) for r in rows) == sorted(
            [*((kind, t) for kind in ("distill", "teacher") for t in TEACHERS), ("scratch", None), ("unet_ae", None)])
        assert {r["title"] for r in rows if r["teacher"]} == {
            f"{title} ({t})" for title in ("teacher features (Mahalanobis)", "DistillClassifier distilled")
            for t in TEACHERS}
    assert sorted(c["label"].split(" ")[-1] for c in results["cost"] if c["teacher"]) == sorted(
        f"({t})" for t in TEACHERS for _ in range(2))
    checks = [c["check"] for c in results["hypothesis"]]
    for teacher in TEACHERS:  # the first teacher's checks come first
        assert sum(check.startswith(f"{teacher}: ") for check in checks) == 4  # gap, latency, gain per category, all
    assert checks[0].startswith(f"{TEACHERS[0]}: distilled student vs teacher-feature reference")
    gap = results["hypothesis"][0]
    distill = [r["image_auroc"] for r in results["main"] if r["kind"] == "distill" and r["teacher"] == TEACHERS[0]
               and r["scope"] != "all"]
    teacher = [r["image_auroc"] for r in results["main"] if r["kind"] == "teacher" and r["teacher"] == TEACHERS[0]]
    assert gap["value"] == pytest.approx(100 * (np.mean(distill) - np.mean(teacher)))  # mean over both categories


@pytest.mark.slow  # merges the runs of the module fixture
def test_merge_keeps_the_rows_of_every_run_and_refuses_other_settings(
    split_study: dict[str, Path], tmp_path: Path
) -> None:
    parts = [json.loads((split_study[name] / "results.json").read_text()) for name in SPLIT_RUNS]
    merged = json.loads((split_study["merged"] / "results.json").read_text())
    assert merged["main"] == [row for part in parts for row in part["main"]]
    assert merged["runs"] == [run for part in parts for run in part["runs"]]
    assert merged["cost"] == parts[0]["cost"] and merged["dbscan"] == parts[0]["dbscan"]
    assert merged["context"]["categories"] == ["synth_a", "synth_b"]
    other = json.loads((split_study["synth_b"] / "results.json").read_text())
    other["context"]["config"]["seed"] = "7"
    (tmp_path / "other_seed").mkdir()
    (tmp_path / "other_seed" / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"other_seed was run with other settings .*seed: '42' in"):
        merge_runs([split_study["synth_a"], tmp_path / "other_seed"], tmp_path / "out")
    other["context"]["config"]["seed"], other["context"]["teachers"] = "42", ["efficientnet_lite0"]
    (tmp_path / "other_seed" / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="teachers"):
        merge_runs([split_study["synth_a"], tmp_path / "other_seed"], tmp_path / "out")
    with pytest.raises(ValueError, match="both hold"):
        merge_runs([split_study["synth_a"], split_study["synth_a"]], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        merge_runs([split_study["synth_a"], tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
