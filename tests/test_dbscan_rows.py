"""DBSCANPostProcessor's collected test rows and its report, without Lightning."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from anomalib_simplenet.callbacks.dbscan_report import RESULTS_CSV, assignment_metrics, write_results
from anomalib_simplenet.callbacks.dbscan_rows import ImageRows
from anomalib_simplenet.clustering import NOISE, DBSCANDetector, NoveltyAssignment


def _batch(paths: list[str] | None, gt: list[int] | None, score: list[float] | None) -> SimpleNamespace:
    def tensor(values: list | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values)

    label = None if score is None else tensor([s > 0.5 for s in score])
    return SimpleNamespace(image_path=paths, gt_label=tensor(gt), pred_score=tensor(score), pred_label=label)


def _assignment(labels: list[int]) -> NoveltyAssignment:
    return NoveltyAssignment(labels=np.array(labels), scores=np.arange(len(labels), dtype=float))


def test_rows_keep_batch_order_and_fill_missing_fields() -> None:
    rows = ImageRows()
    rows.add(_batch(["b.png", "a.png"], [1, 0], [0.9, 0.1]), np.ones((2, 3)), batch_idx=0)
    rows.add_assignment(_assignment([NOISE, 0]))
    rows.add_final_label(torch.tensor([True, False]), 2)
    rows.add(_batch(None, None, None), np.zeros((1, 3)), batch_idx=1)  # a batch without paths, labels, scores
    rows.add_assignment(_assignment([0]))
    rows.add_final_label(None, 1)
    assert len(rows) == 3 and rows.embeddings().shape == (3, 3)
    table = rows.rows(rows.gt(), rows.assignment())
    assert [row["image_path"] for row in table] == ["b.png", "a.png", "batch1_0"]
    assert [row["gt_label"] for row in table] == [1, 0, -1]
    assert [row["dbscan_anomalous"] for row in table] == [1, 0, 0]
    assert [row["model_label"] for row in table] == [1, 0, -1]
    assert [row["pred_label"] for row in table] == [1, 0, -1]
    assert math.isnan(table[2]["model_score"])


def test_gather_in_one_process_orders_rows_by_path_and_reassigns() -> None:
    rows = ImageRows()
    rows.add(_batch(["b.png", "a.png", "b.png"], [1, 0, 1], [0.9, 0.1, 0.9]), np.arange(9.0).reshape(3, 3), 0)
    rows.add_final_label(torch.tensor([True, False, True]), 3)
    seen = []

    def assign(embeddings: np.ndarray) -> NoveltyAssignment:
        seen.append(embeddings)
        return _assignment([0] * len(embeddings))

    rows.gather(assign)
    assert rows.paths == ["a.png", "b.png"]  # a padded repeat counts once
    assert rows.gt().tolist() == [0, 1]
    np.testing.assert_array_equal(seen[0], [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]])
    assert len(rows.assignment().labels) == 2


def test_metrics_are_nan_with_a_note_when_labels_are_missing(tmp_path: Path) -> None:
    normal = np.random.default_rng(0).normal(size=(20, 2))
    detector = DBSCANDetector(min_samples=3).fit(normal)
    assignment = detector.assign(np.array([[0.0, 0.0], [50.0, 50.0]]))
    metrics, notes = assignment_metrics(np.array([0, 1]), assignment, detector)
    assert metrics["f1"] == 1.0 and metrics["n_noise"] == 1.0
    metrics, notes = assignment_metrics(np.array([0, -1]), assignment, detector)
    assert math.isnan(metrics["f1"]) and any("no ground-truth label" in note for note in notes)

    write_results(tmp_path, [{"image_path": "a.png", "gt_label": 0}, {"image_path": "b.png", "gt_label": 1}])
    with (tmp_path / RESULTS_CSV).open() as file:
        assert [row["image_path"] for row in csv.DictReader(file)] == ["a.png", "b.png"]
