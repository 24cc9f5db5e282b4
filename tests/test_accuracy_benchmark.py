"""``benchmarks/accuracy.py`` trains SimpleNet and the four anomalib peers on the same weights and writes the table.

Plumbing only (random weights, one epoch, synthetic images): the figures mean nothing, the rows must all be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import load_benchmark

# Trains five models, each in its own process.
pytestmark = pytest.mark.slow

MODELS = ["simplenet", "padim", "patchcore", "glass", "supersimplenet"]
METRICS = ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score")


@pytest.mark.filterwarnings("ignore")
def test_every_model_is_trained_and_scored_on_the_shared_weights(synthetic_root: Path, tmp_path: Path) -> None:
    benchmark = load_benchmark("accuracy")
    # 128 px: anomalib's Supersimplenet Perlin noise fails at 64 px.
    results = benchmark.main(["--category", "synthetic", "--data-root", str(synthetic_root), "--weights", "random",
                              "--image-size", "128", "--epochs", "1", "--peer-epochs", "1", "--num-workers", "0",
                              "--coreset-ratio", "0.1", "--output", str(tmp_path)])
    assert list(results) == MODELS
    assert not {name: row["error"] for name, row in results.items() if "error" in row}
    for name, row in results.items():
        assert all(0.0 <= row[key] <= 1.0 for key in METRICS), name
        assert row["fit_s"] > 0 and row["test_images_per_s"] > 0, name
        # Raw-score metrics beside anomalib's: the post-processor on the same scores gives the Evaluator's figure.
        assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0, name
        assert row["image_auroc_normalised"] == pytest.approx(row["image_AUROC"], abs=1e-4), name
        assert row["peak_rss_mb"] > 100, name  # each model ran in its own process, measured there
    # SimpleNet's validation loss is recorded per epoch (the basis of its epoch default).
    assert len(results["simplenet"]["per_epoch"]) == 1 and "val_loss" in results["simplenet"]["per_epoch"][0]
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert "random initialisation" in saved["header"] and "128 px" in saved["header"]
    table = (tmp_path / "accuracy.md").read_text()
    assert all(f"| {name} |" in table for name in MODELS)
    assert "image AUROC raw | image AUROC normalised" in table and "peak RSS MB" in table
