"""The comparison report command end to end on the tiny synthetic set, with one variant made to fail."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from anomalib.deploy import CompressionType

from anomalib_simplenet.benchmark.run import main
from anomalib_simplenet.lab import export as export_module
from anomalib_simplenet.lab.data import subset as make_subset
from anomalib_simplenet.data import subset

from .conftest import TINY_SIMPLENET

VARIANTS = ["torch FP32", "OpenVINO FP32", "OpenVINO FP16", "OpenVINO INT8", "OpenVINO INT8_PTQ", "OpenVINO INT8_ACQ"]


@pytest.fixture(autouse=True)
def _quiet_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    """One torch thread (tiny model, shared CPU) and the working directory in tmp."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_make_subset_links_evenly_spread_images_and_their_masks(synthetic_root: Path, tmp_path: Path) -> None:
    root = make_subset(synthetic_root, "synthetic", tmp_path / "subset", max_train=5, max_test=6)
    category = root / "synthetic"
    assert len(list((category / "train" / "good").iterdir())) == 5
    tests = sorted(category.glob("test/*/*.png"))
    assert [p.parent.name for p in tests].count("good") == 2 and len(tests) == 6  # 3 folders × 2
    assert all(p.is_file() and not p.is_symlink() for p in tests)  # anomalib drops symlinks leaving the root
    for path in tests:
        if path.parent.name != "good":
            assert (category / "ground_truth" / path.parent.name / f"{path.stem}_mask.png").is_file()
    with pytest.raises(FileNotFoundError, match="--data-root"):
        make_subset(tmp_path, "missing", tmp_path / "x", 1, 1)


def test_subset_selects_defect_types_and_replaces_an_old_subset(synthetic_root: Path, tmp_path: Path) -> None:
    origin, target = synthetic_root / "synthetic", tmp_path / "root" / "synthetic"
    (target / "test" / "stale").mkdir(parents=True)  # left over from an earlier, larger subset
    root = subset.make_subset(origin, target, train=3, test_good=None, test_defects=2, defects=["scratch"])
    assert root == target.parent
    assert sorted(p.name for p in (target / "test").iterdir()) == ["good", "scratch"]
    assert len(list((target / "test" / "good").iterdir())) == len(list((origin / "test" / "good").iterdir()))
    scratches = sorted((target / "test" / "scratch").iterdir())
    all_scratches = sorted((origin / "test" / "scratch").iterdir())
    assert [p.name for p in scratches] == [all_scratches[0].name, all_scratches[len(all_scratches) // 2].name]
    assert sorted(p.name for p in (target / "ground_truth" / "scratch").iterdir()) == [
        f"{p.stem}_mask.png" for p in scratches
    ]
    with pytest.raises(FileNotFoundError, match="crack"):
        subset.make_subset(origin, target, defects=["crack"])


@pytest.mark.slow  # trains, exports six variants, measures each
def test_report_command_end_to_end(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train, export all six variants (INT8 made to fail), measure, and write table, CSV, JSON and plot."""
    real_variant = export_module.openvino_variant

    def failing_int8(model: object, graph: object, target: Path, compression: object = None, *args: object) -> Path:
        if compression == CompressionType.INT8:
            msg = "injected failure"
            raise RuntimeError(msg)
        return real_variant(model, graph, target, compression, *args)

    monkeypatch.setattr(export_module, "openvino_variant", failing_int8)
    output = tmp_path / "run"
    code = main([
        "--model", "SimpleNet", "--model-args", json.dumps(TINY_SIMPLENET), "--data-root", str(synthetic_root),
        "--category", "synthetic", "--output", str(output), "--epochs", "1", "--max-train", "12", "--max-test", "12",
        "--threads", "1", "--warmup", "1", "--throughput-seconds", "0.1", "--batch-size", "4",
        "--acq", "--max-drop", "1.0",
    ])  # fmt: skip
    assert code == 0

    payload = json.loads((output / "results.json").read_text())
    records = {r["variant"]: r for r in payload["results"]}
    assert list(records) == VARIANTS
    assert records["OpenVINO INT8"]["status"] == "failed: RuntimeError: injected failure"
    assert records["OpenVINO INT8"]["latency_ms_median"] is None
    ok = [name for name in VARIANTS if name != "OpenVINO INT8"]
    assert all(records[name]["status"] == "ok" for name in ok)

    torch_row, fp32 = records["torch FP32"], records["OpenVINO FP32"]
    assert torch_row["speedup_latency"] == pytest.approx(1.0) and torch_row["size_ratio"] == pytest.approx(1.0)
    for name in ok:
        row = records[name]
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p95"] and row["throughput_ips"] > 0
        assert row["speedup_latency"] == pytest.approx(torch_row["latency_ms_median"] / row["latency_ms_median"])
        assert row["size_ratio"] == pytest.approx(row["size_mb"] / torch_row["size_mb"])
        assert all(0.0 <= row[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "image_f1"))
    # The measured torch metrics are anomalib's Engine.test metrics (same images, same metric classes).
    assert payload["context"]["weights"] == "random initialisation (pre_trained=False)"  # explicit args win
    engine_test = payload["context"]["Engine.test (torch)"]
    assert torch_row["image_auroc"] == pytest.approx(engine_test["image_AUROC"], abs=1e-3)
    assert torch_row["pixel_auroc"] == pytest.approx(engine_test["pixel_AUROC"], abs=1e-3)
    # OpenVINO FP32 reproduces torch on the raw test images; FP16 halves the file.
    assert fp32["max_abs_score_diff"] <= 1e-3 and fp32["image_auroc"] == pytest.approx(torch_row["image_auroc"])
    assert records["OpenVINO FP16"]["size_mb"] < 0.6 * fp32["size_mb"]
    assert len(payload["scores"]["torch FP32"]) == len(payload["scores"]["OpenVINO FP32"]) > 0

    markdown = (output / "report.md").read_text()
    # The raw-score table (header, torch row), then the variants table (header, one row per variant).
    assert markdown.count("\n| ") == 2 + len(VARIANTS) + 1 and "failed: RuntimeError: injected failure" in markdown
    raw = payload["context"]["torch model, raw scores (before anomalib's normalisation)"]
    assert raw["image_auroc_normalised"] == pytest.approx(engine_test["image_AUROC"], abs=1e-3)
    assert 0.0 <= raw["image_auroc"] <= 1.0 and "image AUROC raw" in markdown
    with (output / "results.csv").open() as handle:
        assert [row["variant"] for row in csv.DictReader(handle)] == VARIANTS
    assert (output / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "exports" / "openvino_int8_acq" / "model.xml").is_file()


def test_unknown_model_is_a_clear_error(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--model: no model class 'NoSuchModel'"):
        main(["--model", "NoSuchModel", "--data-root", str(synthetic_root), "--category", "synthetic",
              "--output", str(tmp_path / "run")])  # fmt: skip


def test_weights_option_is_parsed_once_for_every_script(tmp_path: Path) -> None:
    import argparse

    from anomalib_simplenet.lab.weights import add_weights_argument, parse_weights, weights_kwargs

    parser = argparse.ArgumentParser()
    add_weights_argument(parser)
    assert parser.parse_args([]).weights.kind == "packaged"
    assert weights_kwargs("DistillClassifier", parser.parse_args([]).weights) == {
        "pre_trained": True, "teacher_weights": None,
    }
    assert weights_kwargs("SimpleNet", parse_weights("random")) == {"pre_trained": False, "backbone_weights": None}
    assert weights_kwargs("UNetAE", parse_weights("random")) == {}
    weights = tmp_path / "net.pth"
    weights.write_bytes(b"")
    assert weights_kwargs("SimpleNet", parse_weights(str(weights)))["backbone_weights"] == str(weights)
    for bad in ("pretrained", str(tmp_path / "missing.pth"), str(tmp_path)):
        with pytest.raises(argparse.ArgumentTypeError, match="--weights must be 'packaged', 'random'"):
            parse_weights(bad)
