"""Lightning DDP with two CPU processes (gloo): every model trains, validates and tests; what it fits on the
training or validation images equals a one-process run on the same images; one checkpoint, loadable in one
process; SimpleNet's feature cache per rank; the ``anomalib train`` CLI.

The 2-process runs start ``ddp_support.py`` in a subprocess (Lightning's ``ddp`` re-launches the script for
the other rank); the one-process references run in this process. ``--frozen`` keeps the network at its
initial weights in both runs, so the fitted statistics must agree to float precision: a statistic computed
on one rank's share, or with the sampler's padded repeats counted twice, differs by far more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anomalib_simplenet
from anomalib_simplenet.data import make_synthetic_mvtec

from . import ddp_support
from .conftest import anomalib_command, load_benchmark

pytestmark = pytest.mark.slow

SCRIPT = Path(ddp_support.__file__)
ENTRY_BYTES = 64 * 8 * 8 * 4  # SimpleNet's tiny features per image: 64 channels on an 8×8 grid, float32
# Disk cache bounded so that a rank's share (8 of 15 images) fits and the whole training set does not.
SIMPLENET_CACHE = {"feature_cache": "disk", "feature_cache_max_gb": 12 * ENTRY_BYTES / 2**30}
MODELS = ("DistillClassifier", "SimpleNet", "UNetAE")
# Measured differences 2 processes vs 1 (frozen networks): statistics ≤ 2e-6 absolute (pixel min/max of the
# maps; convolutions of differently composed batches round differently), DBSCAN eps ≤ 1e-6 relative, test
# metrics ≤ 6e-8 on synthetic data and 1.4e-5 on magnetic_tile (pixel F1: pixels that sit on the threshold).
STATE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
METRIC_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 training images (odd: the distributed sampler pads one repeat), batches of 3 (uneven last batch)."""
    root = tmp_path_factory.mktemp("ddp_data")
    make_synthetic_mvtec(root, image_size=64, n_train=15, n_test_good=6, n_test_defect=6, seed=0)
    return root


def _arguments(model: str, root: Path, category: str, out: Path, extra: list[str]) -> list[str]:
    arguments = ["--model", model, "--root", str(root), "--category", category, "--out", str(out), "--epochs", "1"]
    if model == "SimpleNet":  # two epochs: the second one is served by the caches
        settings = {**SIMPLENET_CACHE, "feature_cache_dir": str(out / "cache")}
        arguments += ["--epochs", "2", "--model-args", json.dumps(settings)]
    return [*arguments, *extra]


def _run(command: list[str]) -> str:
    """Run ``command`` (one intra-op thread per process); its output, after checking that it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def run_ddp(model: str, root: Path, category: str, out: Path, *extra: str) -> dict:
    """Two ranks in subprocesses; rank 0's saved results."""
    _run([sys.executable, str(SCRIPT), *_arguments(model, root, category, out, list(extra)), "--devices", "2"])
    return torch.load(out / "fitted.pt", weights_only=False)


def run_single(model: str, root: Path, category: str, out: Path, *extra: str) -> dict:
    """The same run in this process, on one device."""
    ddp_support.main([*_arguments(model, root, category, out, list(extra)), "--devices", "1"])
    return torch.load(out / "fitted.pt", weights_only=False)


@pytest.fixture(scope="module", params=MODELS)
def equivalence(request: pytest.FixtureRequest, ddp_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model = request.param
    out = tmp_path_factory.mktemp(f"ddp_{model}")
    two = run_ddp(model, ddp_data, "synthetic", out / "two", "--frozen", "--dbscan")
    one = run_single(model, ddp_data, "synthetic", out / "one", "--frozen", "--dbscan")
    return model, out, two, one


def assert_same_fit(two: dict, one: dict) -> None:
    """Every parameter and buffer (fitted statistics, post-processor normalisation and thresholds) and metric."""
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["state"].keys() == one["state"].keys()
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, **STATE_TOLERANCE, equal_nan=True, msg=key)
    assert two["metrics"].keys() == one["metrics"].keys()
    for name, value in one["metrics"].items():
        assert abs(two["metrics"][name] - value) <= METRIC_TOLERANCE, (name, two["metrics"][name], value)


def test_two_processes_fit_what_one_process_fits(equivalence: tuple) -> None:
    model, _, two, one = equivalence
    assert_same_fit(two, one)
    fitted = [key for key in one["state"] if "post_processor" in key or "gaussians" in key or "mahalanobis" in key]
    assert any("_image_threshold" in key for key in fitted), fitted
    if model != "SimpleNet":  # their own fitted state
        assert any(key.startswith(("model.gaussians", "model.mahalanobis")) for key in fitted), fitted


def test_dbscan_reference_set_and_test_rows_span_all_ranks(equivalence: tuple) -> None:
    _, _, two, one = equivalence
    assert two["dbscan"]["metrics"]["eps"] == pytest.approx(one["dbscan"]["metrics"]["eps"], rel=1e-6)
    rows_two = {row["image_path"]: row for row in two["dbscan"]["results"]}
    rows_one = {row["image_path"]: row for row in one["dbscan"]["results"]}
    assert rows_two.keys() == rows_one.keys() and len(rows_two) == len(two["dbscan"]["results"]) == 9
    for path, row in rows_one.items():
        assert rows_two[path]["dbscan_label"] == row["dbscan_label"], path
        assert rows_two[path]["gt_label"] == row["gt_label"]


def test_one_checkpoint_that_loads_in_one_process(equivalence: tuple) -> None:
    model, _, two, _ = equivalence
    assert len(two["checkpoints"]) == 1, two["checkpoints"]
    loaded = getattr(anomalib_simplenet, model).load_from_checkpoint(two["checkpoints"][0])
    state = loaded.state_dict()
    for key in ("post_processor._image_threshold", "post_processor.image_max"):
        torch.testing.assert_close(state[key], two["state"][key])


def test_simplenet_caches_features_per_rank(equivalence: tuple, ddp_data: Path) -> None:
    model, out, _, _ = equivalence
    if model != "SimpleNet":
        pytest.skip("SimpleNet only")
    ranks = [json.loads((out / "two" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    train = {str(p) for p in (ddp_data / "synthetic" / "train" / "good").glob("*.png")}
    shards = [set(rank["epochs"][0]) for rank in ranks]
    assert shards[0] | shards[1] == train  # every image trained on; a rank keeps its share every epoch
    for rank, shard in zip(ranks, shards, strict=True):
        assert all(set(epoch) == shard for epoch in rank["epochs"])
        assert rank["epochs"][0] != rank["epochs"][1]  # reshuffled within the share
        cache = rank["cache"]
        # Filled once, by the feature-scale pass before the first epoch; every epoch then reads the cache.
        assert cache["entries"] == cache["files"] == cache["computed"] == len(shard)
        assert cache["served"] == sum(len(epoch) for epoch in rank["epochs"])
    directories = [rank["cache"]["directory"] for rank in ranks]
    assert directories == [str(out / "two" / "cache" / "rank0"), str(out / "two" / "cache" / "rank1")]
    single = json.loads((out / "one" / "rank0.json").read_text())["cache"]
    assert single["entries"] == 0 and "would not fit" in single["reason"]  # the bound is per process


def test_comparison_catches_statistics_of_one_rank_only(ddp_data: Path, tmp_path: Path) -> None:
    """Each rank fitting on its own share (the DDP bug) is far outside the tolerance above."""
    two = run_ddp("DistillClassifier", ddp_data, "synthetic", tmp_path / "local", "--frozen", "--local-only")
    one = run_single("DistillClassifier", ddp_data, "synthetic", tmp_path / "one", "--frozen")
    with pytest.raises(AssertionError):
        assert_same_fit(two, one)
    key = "model.gaussians.0.image.mean"
    assert (two["state"][key] - one["state"][key]).abs().max() > 100 * STATE_TOLERANCE["atol"]


def test_magnetic_tile_subset(magnetic_tile_subset: Path, tmp_path: Path) -> None:
    two = run_ddp("DistillClassifier", magnetic_tile_subset, "magnetic_tile", tmp_path / "two", "--frozen")
    one = run_single("DistillClassifier", magnetic_tile_subset, "magnetic_tile", tmp_path / "one", "--frozen")
    assert_same_fit(two, one)


def test_anomalib_cli_ddp(ddp_data: Path, tmp_path: Path) -> None:
    settings = {f"--model.{name}": str(value).lower() for name, value in ddp_support.MODELS["SimpleNet"].items()}
    options = {
        **settings, "--data": "MVTecAD", "--data.root": str(ddp_data), "--data.category": "synthetic",
        "--data.num_workers": "0", "--data.train_batch_size": "4", "--data.val_split_mode": "from_test",
        "--trainer.strategy": "ddp", "--trainer.devices": "2", "--trainer.accelerator": "cpu",
        "--trainer.max_epochs": "1", "--trainer.logger": "false", "--default_root_dir": str(tmp_path),
    }
    arguments = [item for pair in options.items() for item in pair]
    output = _run([anomalib_command(), "train", "--model", "SimpleNet", *arguments])
    assert "image_AUROC" in output
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    loaded = anomalib_simplenet.SimpleNet.load_from_checkpoint(checkpoints[0])
    assert torch.isfinite(loaded.post_processor._image_threshold)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (none in CI; the CPU runs above are the check)")
def test_two_gpus_fit_what_one_cpu_process_fits(ddp_data: Path, tmp_path: Path) -> None:
    """The same check on GPUs (NCCL). Looser: cuDNN's convolutions round differently from the CPU's."""
    two = run_ddp("DistillClassifier", ddp_data, "synthetic", tmp_path / "gpu", "--frozen", "--accelerator", "gpu")
    one = run_single("DistillClassifier", ddp_data, "synthetic", tmp_path / "cpu", "--frozen")
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-3, atol=1e-4, equal_nan=True, msg=key)


def test_scaling_benchmark_times_one_and_two_processes(synthetic_root: Path, tmp_path: Path) -> None:
    """``benchmarks/ddp_scaling.py``: one record per process count, rank 0's epoch times, every rank's peak memory,
    test metrics on the same images whatever the process count, and the JSON file."""
    load_benchmark("ddp_scaling").main([
        "--data-root", str(synthetic_root), "--category", "synthetic", "--train", "8", "--test-good", "4",
        "--test-defects", "2", "--image-size", "64", "--epochs", "2", "--batch", "4", "--models", "UNetAE",
        "--procs", "1", "2", "--out", str(tmp_path),
    ])  # fmt: skip
    records = json.loads((tmp_path / "ddp_scaling_seed0.json").read_text())
    assert [(r["model"], r["procs"], len(r["peak_rss_mb"])) for r in records] == [("UNetAE", 1, 1), ("UNetAE", 2, 2)]
    for record in records:
        assert len(record["epoch_seconds"]) == 2 and all(s > 0 for s in record["epoch_seconds"])
        assert all(mb > 100 for mb in record["peak_rss_mb"]) and record["rank"] == 0
        assert all(0.0 <= record["raw"][key] <= 1.0 for key in ("image_auroc", "pixel_auroc"))
    # Both runs test the same images: the same image AUROC (the test metrics are synchronised over the ranks).
    assert records[0]["metrics"]["image_AUROC"] == pytest.approx(records[1]["metrics"]["image_AUROC"], abs=1e-4)
