"""The sweep command end to end at tiny size: versioned run folders, tables, plots, a failed run reported."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from anomalib_simplenet.experiments.sweep import main, next_version_dir
from anomalib_simplenet.lab.settings import make_settings

from .conftest import REPO_ROOT

# Trains four settings through anomalib's CLI.
pytestmark = pytest.mark.slow

CONFIGS = REPO_ROOT / "configs"
METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score")
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def sweep(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """UNetAE latent 64/128/256 plus one broken variant, 2 epochs on the synthetic set."""
    tmp = tmp_path_factory.mktemp("sweep")
    broken = tmp / "unet_ae_broken.yaml"
    broken.write_text("model:\n  init_args:\n    latent_dim: not_a_number\n")
    variants = [CONFIGS / f"unet_ae_latent{n}.yaml" for n in (64, 128, 256)]
    status = main([
        "--config", str(CONFIGS / "unet_ae.yaml"), "--variants", *map(str, variants), str(broken),
        "--out", str(tmp / "out"), "--max-epochs", "2", "--title", "tiny sweep",
        "--model.image_size", "64", "--model.depth", "3", "--model.base_channels", "8",
        "--data.root", str(synthetic_root), "--data.category", "synthetic", "--data.num_workers", "0",
        "--data.train_batch_size", "8", "--data.eval_batch_size", "8",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    return tmp / "out", status


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as file:
        return {row["setting"]: row for row in csv.DictReader(file)}


def test_each_setting_gets_a_row_and_the_failure_is_reported(sweep: tuple[Path, int]) -> None:
    out, status = sweep
    assert status == 1, "one run failed, so the command must say so"
    rows = _summary(out)
    assert list(rows) == ["latent64", "latent128", "latent256", "broken"]
    assert rows["broken"]["status"] == "failed"
    assert "latent_dim" in rows["broken"]["error"], rows["broken"]["error"]
    for name in ("latent64", "latent128", "latent256"):
        row = rows[name]
        assert row["status"] == "ok", row["error"]
        assert all(0.0 <= float(row[m]) <= 1.0 for m in METRICS)
        assert all(math.isfinite(float(row[k])) for k in ("train_loss", "val_loss", "best_val_loss", "time_s"))
        assert row["epochs"] == "2"
    markdown = (out / "summary.md").read_text()
    assert "| latent64 | ok |" in markdown and "| broken | failed |" in markdown
    assert all((out / name).read_bytes().startswith(PNG) for name in ("metrics.png", "loss_curves.png"))


def test_runs_are_versioned_and_self_contained(sweep: tuple[Path, int]) -> None:
    out, _ = sweep
    run = out / "latent128" / "v0"
    result = json.loads((run / "result.json").read_text())
    assert result["configs"][-1].endswith("unet_ae_latent128.yaml")
    assert (run / "loss_curve.png").read_bytes().startswith(PNG)
    with (run / "history.csv").open() as file:
        history = list(csv.DictReader(file))
    assert [row["epoch"] for row in history] == ["1.0", "2.0"] or [row["epoch"] for row in history] == ["1", "2"]
    assert all(math.isfinite(float(row["val_loss"])) for row in history)
    # The config's CSV logger and checkpoint were redirected into the run folder; the best val_loss was tested.
    (metrics_csv,) = run.glob("logs/unet_ae/version_0/metrics.csv")
    assert "val_loss" in metrics_csv.read_text().splitlines()[0]
    assert Path(result["checkpoint"]).is_file() and str(run) in result["checkpoint"]
    assert f"val_loss{result['best_val_loss']:.4f}" in Path(result["checkpoint"]).name
    assert (out / "broken" / "v0" / "error.txt").is_file()


def test_next_version_dir_counts_up(tmp_path: Path) -> None:
    assert next_version_dir(tmp_path / "a").name == "v0"
    (tmp_path / "a" / "v7").mkdir()
    assert next_version_dir(tmp_path / "a").name == "v8"


def test_settings_are_named_after_the_variant_and_checked(tmp_path: Path) -> None:
    base = CONFIGS / "unet_ae.yaml"
    settings = make_settings([base], [CONFIGS / "unet_ae_latent64.yaml"])
    assert [(s.name, s.configs[-1].name) for s in settings] == [("latent64", "unet_ae_latent64.yaml")]
    assert make_settings([base], [])[0].name == "base"
    with pytest.raises(FileNotFoundError, match="--variants: no such file: .*missing.yaml"):
        make_settings([base], [tmp_path / "missing.yaml"])
    with pytest.raises(ValueError, match="same setting name"):
        make_settings([base], [CONFIGS / "unet_ae_latent64.yaml"] * 2)


def test_command_line_errors_name_the_argument(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert "--config: no such file" in capsys.readouterr().err
