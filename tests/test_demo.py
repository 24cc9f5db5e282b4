"""The README's demo, end to end at a tiny size: it trains, tests, and says where its results are."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_simplenet.demo import run


def test_demo_prints_metrics_weights_images_and_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "demo"
    metrics = run(["--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--epochs", "1",
                   "--output", str(output)])  # fmt: skip
    printed = capsys.readouterr().out
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert "weights: RANDOM initialisation" in printed
    assert f"| image_AUROC | {metrics['image_AUROC']:.4f} |" in printed
    images = Path(printed.split("[demo] Result images: ")[1].splitlines()[0])
    checkpoint = Path(printed.split("[demo] Checkpoint: ")[1].splitlines()[0])
    assert images.is_dir() and any(images.rglob("*.png"))
    assert checkpoint.is_file() and checkpoint.suffix == ".ckpt"
    assert output in checkpoint.parents
