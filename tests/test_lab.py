"""The measuring layer's own pieces: raw-score metrics, the raw/normalised columns, a measurement in its own process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_simplenet.lab.data import images_by_label, subset
from anomalib_simplenet.lab.isolated import run_isolated
from anomalib_simplenet.lab.report import markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.scores import Predictions, aupro, auroc, metrics

from .conftest import REPO_ROOT


def test_raw_scores_far_beyond_one_do_not_tie() -> None:
    """torchmetrics squashes values outside [0, 1] with a sigmoid (sigmoid(40) == sigmoid(80) in float32): the raw
    scores must be rescaled first, or every large score ties."""
    labels = np.array([0, 0, 1, 1])
    assert auroc(labels, np.array([40.0, 50.0, 60.0, 80.0])) == 1.0
    assert auroc(labels, np.array([40.0, 80.0, 60.0, 50.0])) == 0.5
    assert math.isnan(auroc(np.zeros(3), np.arange(3.0)))  # one class only


def test_normalised_twin_shows_what_clamping_ties() -> None:
    """Test images beyond the validation range are clamped to 1 by anomalib's normalisation and tie there."""
    labels = np.array([0, 1, 0, 1])
    raw = np.array([0.5, 2.0, 3.0, 4.0])  # the 3rd (normal) image is above the validation maximum, below the 4th
    normalised = np.minimum(raw / 2.5, 1.0)  # validation range [0, 2.5] → [0, 1], clamped
    maps = np.zeros((4, 2, 2), np.float32)
    values = metrics(Predictions(raw, labels, maps, None, normalised, maps))
    assert values["image_auroc"] == 0.75 and values["image_auroc_normalised"] == 0.625
    assert math.isnan(values["pixel_auroc"])  # no masks


def test_metric_columns_pair_raw_and_normalised() -> None:
    records = [{"image_auroc": 0.9, "image_auroc_normalised": 0.8}, {"image_auroc": 0.7}]
    assert metric_header(records) == ["image AUROC raw", "image AUROC normalised", "Δ normalised − raw"]
    assert metric_cells(records[0], records) == ["0.9000", "0.8000", "-0.1000"]
    assert metric_cells(records[1], records) == ["0.7000", "–", "–"]
    table = markdown_table(["model", *metric_header(records)], [["a|b", *metric_cells(records[0], records)]])
    assert table.splitlines()[1] == "|---|---|---|---|" and "| a/b |" in table


def test_a_crashing_measurement_is_an_error_row(tmp_path: Path) -> None:
    row = run_isolated("os:abort", {}, tmp_path, "crash")
    assert row["error"] == "child process killed by SIGABRT" and row["peak_rss_mb"] > 0


def sleep_and_report(pid_file: str, seconds: float) -> dict:
    """A long measurement for the test below: writes its process id, then sleeps."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return {}


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "\nState:\tZ" not in status.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_measurement_dies_with_the_benchmark_that_started_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = ("from pathlib import Path; from anomalib_simplenet.lab.isolated import run_isolated; "
            f"run_isolated('tests.test_lab:sleep_and_report', {{'pid_file': {str(pid_file)!r}, 'seconds': 300}}, "
            f"Path({str(tmp_path)!r}), 'sleeper')")
    benchmark = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(pid_file.read_text())
    assert running(child)
    benchmark.kill()  # SIGKILL: the benchmark runs no clean-up of its own
    benchmark.wait()
    deadline = time.monotonic() + 30
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(child)


def test_subset_shares_max_test_over_the_test_folders(synthetic_root: Path, tmp_path: Path) -> None:
    root = subset(synthetic_root, "synthetic", tmp_path, max_train=3, max_test=7)
    counts = {p.name: len(list(p.iterdir())) for p in (root / "synthetic" / "test").iterdir()}
    assert counts == {"good": 2, "blob": 2, "scratch": 2}  # 7 // 3 folders
    with pytest.raises(FileNotFoundError, match="--data-root"):
        subset(tmp_path, "missing", tmp_path / "x")


def test_aupro_on_raw_maps_rewards_the_defect_regions() -> None:
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 4:8, 4:8] = masks[3, 10:14, 2:6] = True
    maps = masks * 50.0 + np.random.default_rng(0).random((4, 16, 16))  # raw units, far above 1
    assert aupro(masks, maps) == pytest.approx(1.0) and aupro(masks, -maps) == pytest.approx(0.0)
    assert math.isnan(aupro(None, maps))


def test_map_offset_is_reported_in_input_pixels() -> None:
    """A hot spot 3 map pixels right of and 1 below each defect, on maps shrunk 2× from the input: (+6, +2) px."""
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 10:14, 10:14] = masks[1, 20:24, 4:8] = True  # image 2 is normal: no offset counted for it
    maps = np.zeros((3, 32, 32), np.float32)
    maps[0, 11:15, 13:17] = maps[1, 21:25, 7:11] = 1.0
    values = metrics(Predictions(np.zeros(3), np.array([1, 1, 0]), maps, masks, map_scale=(2.0, 2.0)))
    assert values["map_offset_x"] == pytest.approx(6.0) and values["map_offset_y"] == pytest.approx(2.0)
    assert "map_offset_x" not in metrics(Predictions(np.zeros(3), np.array([1, 1, 0]), maps, None))


def test_images_by_label_takes_the_first_of_each_label_across_batches() -> None:
    """Normal and anomalous images are collected apart, in order, over batches, up to each count."""
    from types import SimpleNamespace

    batches = [SimpleNamespace(image=torch.arange(3.0)[:, None, None, None] + 10 * b, gt_label=torch.tensor(labels))
               for b, labels in enumerate([[1, 0, 0], [0, 1, 1]])]
    normal, anomalous = images_by_label(batches, 2, 2, transform=lambda images: images * 2)
    assert [float(i) for i in normal] == [2.0, 4.0]  # batch 0's normals, doubled by the transform
    assert [float(i) for i in anomalous] == [0.0, 22.0]  # batch 0's first image, then batch 1's second


def test_variant_records_compare_with_the_reference_and_keep_failed_rows() -> None:
    """Ratios and accuracy differences against torch FP32; a variant that failed keeps its row, its numbers empty."""
    from anomalib_simplenet.lab.export import OPENVINO_FP16, OPENVINO_INT8, TORCH_FP32, Exported, row_record

    def measured(latency: float, ips: float, image_auroc: float, scores: list[float]) -> dict:
        return {"latency_ms_median": latency, "latency_ms_p95": 2 * latency, "throughput_ips": ips,
                "image_auroc": image_auroc, "pixel_auroc": 0.5, "image_f1": 0.8, "scores": scores}

    reference = Exported(TORCH_FP32, size_bytes=4_000_000, measurement=measured(10.0, 100.0, 0.9, [0.1, 0.7]))
    fp16 = Exported(OPENVINO_FP16, size_bytes=2_000_000, measurement=measured(5.0, 300.0, 0.85, [0.1, 0.75]))
    failed = Exported(OPENVINO_INT8, error="RuntimeError: injected")
    record = row_record(fp16, reference)
    assert record["size_ratio"] == 0.5 and record["speedup_latency"] == 2.0 and record["speedup_throughput"] == 3.0
    assert record["image_auroc_delta_pts"] == pytest.approx(-5.0) and record["pixel_auroc_delta_pts"] == 0.0
    assert record["max_abs_score_diff"] == pytest.approx(0.05) and record["scores"] == [0.1, 0.75]
    record = row_record(failed, reference)
    assert record["status"] == "failed: RuntimeError: injected" and record["latency_ms_median"] is None
    assert record["speedup_latency"] is None and record["max_abs_score_diff"] is None and record["scores"] is None
    assert list(row_record(reference, reference))[:4] == ["variant", "status", "size_mb", "export_s"]
