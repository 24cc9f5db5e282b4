"""DBSCANPostProcessor end to end: each plugin model through the Engine, the modes, the files, the CLI."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback
from sklearn.metrics import f1_score

from anomalib_simplenet import DistillClassifier, SimpleNet, UNetAE
from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.lab import data as lab_data

from .conftest import TINY_SIMPLENET, anomalib_command

TINY_UNET = {"image_size": 64, "depth": 3, "base_channels": 8, "latent_dim": 16}
TINY_DISTILL = {"mode": "scratch", "pre_trained": False, "image_size": 64}
N_TEST = 9  # synthetic_root: 6 good + 12 defect test images, half of them split off for validation


class LabelProbe(Callback):
    """Records ``pred_label`` as anomalib's evaluator and visualizer saw it: runs after every other callback."""

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]

    def on_test_start(self, trainer, pl_module) -> None:
        self.labels: dict[str, bool] = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.labels |= dict(zip(outputs.image_path, outputs.pred_label.tolist(), strict=True))


def _engine(root: Path, *callbacks: Callback) -> Engine:
    return Engine(
        max_epochs=1, default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks),
    )


def _test(model, datamodule, root: Path, callback: DBSCANPostProcessor) -> tuple[dict, LabelProbe, Engine]:
    probe = LabelProbe()
    engine = _engine(root, callback, probe)
    results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    return results, probe, engine


def _column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([int(float(row[name])) for row in rows])


@pytest.fixture(scope="module")
def cli_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Start ``anomalib train`` with a YAML config at once, in the background; ``test_cli_yaml`` collects it.

    Importing anomalib costs a new interpreter ~10 s of one core; overlapping it with the in-process tests
    keeps the module within its time budget on two cores.
    """
    folder = tmp_path_factory.mktemp("dbscan_cli")
    config = folder / "dbscan.yaml"
    config.write_text(f"""
seed_everything: 0
model:
  class_path: anomalib_simplenet.UNetAE
  init_args: {{image_size: 64, depth: 3, base_channels: 8, latent_dim: 16, visualizer: false}}
data:
  class_path: anomalib.data.MVTecAD
  init_args:
    root: {synthetic_root}
    category: synthetic
    train_batch_size: 8
    eval_batch_size: 8
    num_workers: 0
    val_split_mode: from_test
    val_split_ratio: 0.5
    seed: 0
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: anomalib_simplenet.callbacks.DBSCANPostProcessor
      init_args: {{mode: override, min_samples: 3, plots: false}}
default_root_dir: {folder / "results"}
""")
    log = folder / "output.txt"  # a file, not a pipe: nobody reads until the end, a full pipe would block
    with log.open("w") as output:
        process = subprocess.Popen(
            [anomalib_command(), "train", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny model: as the in-process tests, one thread
        )
    yield process, log, folder / "results"
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def unet(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory, cli_run) -> tuple:
    """UNetAE fitted one epoch with the callback attached (it must stay out of the way during fit)."""
    del cli_run  # requested only to start the CLI run early
    torch.manual_seed(0)
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    model = UNetAE(**TINY_UNET)
    _engine(tmp_path_factory.mktemp("unet_fit"), DBSCANPostProcessor()).fit(model, datamodule=datamodule)
    return model, datamodule


def test_report_mode_writes_files_and_metrics(unet: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, datamodule = unet
    callback = DBSCANPostProcessor(mode="report", min_samples=3)
    results, probe, engine = _test(model, datamodule, tmp_path, callback)

    run = Path(engine.trainer.default_root_dir)
    assert run.is_relative_to(tmp_path) and (run / "images").is_dir()  # next to anomalib's own images
    for name in ("dbscan_pca.png", "dbscan_tsne.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    with (run / "dbscan_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    test_paths = set(datamodule.test_data.samples.image_path)
    assert len(rows) == N_TEST and {row["image_path"] for row in rows} == test_paths
    assert list(rows[0]) == ["image_path", "gt_label", "dbscan_label", "dbscan_anomalous", "dbscan_score",
                             "model_score", "model_label", "pred_label"]

    # Logged to the trainer (so to its logger) and printed; the metrics agree with the CSV.
    expected = {"precision", "recall", "f1", "accuracy", "auroc", "n_clusters", "n_noise", "eps"}
    assert {f"dbscan_{name}" for name in expected} <= set(results)
    gt, noise = _column(rows, "gt_label"), _column(rows, "dbscan_anomalous")
    assert results["dbscan_f1"] == pytest.approx(f1_score(gt, noise, zero_division=0))
    assert results["dbscan_n_noise"] == noise.sum()
    assert (noise == (_column(rows, "dbscan_label") == -1)).all()
    out = capsys.readouterr().out
    assert "DBSCAN post-processor — UNetAE (mode=report, space=pca)" in out and "n_clusters" in out

    # Report mode leaves the model's decision alone.
    model_label = _column(rows, "model_label")
    assert (_column(rows, "pred_label") == model_label).all()
    assert [probe.labels[row["image_path"]] for row in rows] == model_label.astype(bool).tolist()


def test_override_replaces_pred_label_before_the_evaluator(unet: tuple, tmp_path: Path) -> None:
    """A huge eps makes DBSCAN flag nothing, so every pred_label must be False where the model flagged some."""
    model, datamodule = unet
    results, probe, engine = _test(model, datamodule, tmp_path, DBSCANPostProcessor(mode="override", eps=1e9,
                                                                                    min_samples=3, plots=False))
    with (Path(engine.trainer.default_root_dir) / "dbscan_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert _column(rows, "model_label").any(), "precondition: the model flags some test images itself"
    assert not any(probe.labels.values()) and len(probe.labels) == N_TEST
    assert results["image_F1Score"] == 0.0  # the evaluator scored the overridden labels
    assert results["image_AUROC"] > 0  # pred_score untouched


def test_degenerate_setup_warns_and_does_not_crash(unet: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, datamodule = unet
    callback = DBSCANPostProcessor(mode="override", min_samples=100, plots=False)
    with pytest.warns(UserWarning, match=r"only 16 usable normal images for min_samples=100"):
        results, probe, engine = _test(model, datamodule, tmp_path, callback)
    assert "image_F1Score" in results and not any(k.startswith("dbscan_") for k in results)
    assert not (Path(engine.trainer.default_root_dir) / "dbscan_results.csv").exists()
    assert "DBSCANPostProcessor skipped" in capsys.readouterr().out
    assert len(probe.labels) == N_TEST  # the model's own labels went through


def test_nan_embeddings_are_noise_with_a_message(unet: tuple, tmp_path: Path, monkeypatch) -> None:
    """Embeddings with NaN (here: of every image in the first test batch) are excluded and labelled noise."""
    model, datamodule = unet
    embed = model.model.image_embedding
    calls = {"test": 0}

    def nan_for_test_batches(images: torch.Tensor) -> torch.Tensor:
        embedding = embed(images)
        if model.trainer.testing and calls["test"] == 2:  # after the 2 normal-image batches: first test batch
            embedding[:, 0] = float("nan")
        calls["test"] += 1
        return embedding

    monkeypatch.setattr(model.model, "image_embedding", nan_for_test_batches)
    callback = DBSCANPostProcessor(mode="report", min_samples=3, plots=False)
    with pytest.warns(UserWarning, match=r"8 of 9 test embeddings contain NaN/inf"):
        results, _, _ = _test(model, datamodule, tmp_path, callback)
    nan_rows = [row for row in callback.results if np.isnan(row["dbscan_score"])]
    assert len(nan_rows) == 8 and all(row["dbscan_label"] == -1 for row in nan_rows)
    assert np.isnan(results["dbscan_auroc"])  # the one finite test image is a single class


def test_simplenet_override_matches_dbscan(synthetic_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    model = SimpleNet(**TINY_SIMPLENET, visualizer=False)
    _engine(tmp_path / "fit").fit(model, datamodule=datamodule)
    callback = DBSCANPostProcessor(mode="override", min_samples=3, plots=False)
    results, probe, _ = _test(model, datamodule, tmp_path / "test", callback)
    noise = {row["image_path"]: bool(row["dbscan_anomalous"]) for row in callback.results}
    assert probe.labels == noise and len(noise) == N_TEST
    assert results["image_F1Score"] == pytest.approx(results["dbscan_f1"])
    assert callback.metrics["n_clusters"] >= 1 and np.isfinite(callback.metrics["auroc"])


def test_distill_classifier_combine_is_or_of_both(synthetic_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    model = DistillClassifier(**TINY_DISTILL, visualizer=False)
    _engine(tmp_path / "fit").fit(model, datamodule=datamodule)
    callback = DBSCANPostProcessor(mode="combine", normal_source="val", min_samples=3, plots=False)
    _, probe, _ = _test(model, datamodule, tmp_path / "test", callback)
    expected = {row["image_path"]: bool(row["model_label"] or row["dbscan_anomalous"]) for row in callback.results}
    assert probe.labels == expected and len(expected) == N_TEST
    assert [row["pred_label"] for row in callback.results] == [int(expected[r["image_path"]]) for r in callback.results]


@pytest.mark.slow
def test_cli_yaml(cli_run: tuple) -> None:
    """``anomalib train --config`` with the callback under ``trainer.callbacks`` (class_path)."""
    process, log, results = cli_run
    process.wait(timeout=600)
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    assert "DBSCAN post-processor — UNetAE (mode=override, space=pca)" in output
    assert "dbscan_f1" in output and "image_F1Score" in output  # in Lightning's results table too
    csv_files = list(results.rglob("dbscan_results.csv"))
    assert len(csv_files) == 1
    with csv_files[0].open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == N_TEST and all(row["pred_label"] == row["dbscan_anomalous"] for row in rows)
