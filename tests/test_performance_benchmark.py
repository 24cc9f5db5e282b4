"""``benchmarks/performance.py --tiny`` runs end to end: every model, the exports, the tables (no timed asserts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .conftest import load_benchmark

# Trains and times every model, exports to OpenVINO.
pytestmark = pytest.mark.slow

OURS = "SimpleNet (ours) torch FP32"
EXPECTED_ROWS = {
    OURS, "SimpleNet (ours) OpenVINO FP32", "SimpleNet (ours) OpenVINO INT8", "anomalib Glass",
    "anomalib Supersimplenet", "anomalib Patchcore", "anomalib Padim", "bare backbone to layer3 (NCHW)",
    "bare backbone to layer3 (channels_last)",
}


def test_tiny_benchmark_end_to_end(synthetic_root: Path, tmp_path: Path) -> None:
    benchmark = load_benchmark("performance")
    result = benchmark.main(["--tiny", "--data-root", str(synthetic_root), "--category", "synthetic",
                             "--output", str(tmp_path)])
    rows = result["rows"]
    assert set(rows) == EXPECTED_ROWS
    assert not {name: row["error"] for name, row in rows.items() if "error" in row}

    for name, row in rows.items():
        speed = row["inference"]
        assert speed["images_per_s"] > 0 and 0 < speed["latency_ms_median"] <= speed["latency_ms_p95"], name
        assert speed["peak_mb_per_batch"] >= 0, name
        if row["kind"] != "limit":
            assert 0.0 <= row["image_AUROC"] <= 1.0 and 0.0 <= row["pixel_AUROC"] <= 1.0, name

    ours = rows[OURS]
    conditions = result["conditions"]
    # The feature-scale pass at the start of fit filled the cache, which then served every image of every epoch,
    # and training went exactly as recomputing would.
    assert ours["cache_images_computed"] == conditions["train_images"]
    assert ours["cache_images_served"] == conditions["train_images"] * conditions["epochs"]
    assert ours["loss_curve_max_abs_diff"] < 1e-4
    assert len(ours["train"]["epoch_s"]) == len(ours["train_uncached"]["epoch_s"]) == conditions["epochs"]
    assert all(math.isfinite(v) and v > 0 for v in ours["train"]["epoch_s"])
    # Exported FP32 graph scores like the torch model on the same images.
    assert abs(rows["SimpleNet (ours) OpenVINO FP32"]["image_AUROC"] - ours["same_loop_AUROC"]["image_AUROC"]) < 1e-6
    assert "random initialisation" in conditions["weights"]

    saved = json.loads((tmp_path / "performance.json").read_text())
    assert set(saved["rows"]) == EXPECTED_ROWS
    table = (tmp_path / "performance.md").read_text()
    assert f"| {OURS} |" in table and "Targets:" in table and "anomalib Supersimplenet" in table
