"""Bad and unusual input: image modes, sizes, broken files, missing folders and masks, odd input sizes."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from anomalib_simplenet.data.checks import DataCheckError, check_datamodule, describe_image, folder_to_8bit
from anomalib_simplenet.data.local import LocalMVTecAD
from anomalib_simplenet.models.distill_classifier.networks import StudentFeatures

from .reliability_support import datamodule, engine, make_model, model_names, tiny_data

CATEGORY = "synthetic"


def _rgb(seed: int = 0, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A smooth grey pattern as ``(H, W, 3)`` uint8 (grey so every mode holds it exactly; smooth for JPEG)."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    grey = 128 + 100 * np.sin(xx / 5.0 + seed) * np.cos(yy / 7.0)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


# ------------------------------------------------------------------------------------------- image modes
def _save_mode(rgb: np.ndarray, mode: str, path: Path) -> Path:
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.full(rgb.shape[:2], 128, np.uint8)))  # alpha is dropped, colour kept
    elif mode == "P":  # a grey palette, so that the indices map back to the exact values
        image = Image.fromarray(rgb[..., 0], mode="P")
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize(("mode", "suffix", "atol"), [
    ("L", ".png", 1e-6), ("P", ".png", 1e-6), ("RGBA", ".png", 1e-6), ("LA", ".png", 1e-6), ("RGB", ".jpg", 0.03),
])
def test_modes_are_read_as_their_rgb_content(mode: str, suffix: str, atol: float, tmp_path: Path) -> None:
    rgb = _rgb()
    path = _save_mode(rgb, mode, tmp_path / f"image{suffix}")
    assert describe_image(path) == ((32, 24), Image.open(path).mode)  # passes the pre-flight check
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(read_image(path, as_tensor=True), expected, atol=atol, rtol=0)


def test_16_bit_png_is_refused_by_name_and_converts_correctly(tmp_path: Path) -> None:
    """anomalib's ``convert("RGB")`` clips 16-bit grey to 8 bits (almost all white): refused, with the fix."""
    values = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    source = tmp_path / "raw" / "part.png"
    source.parent.mkdir()
    Image.fromarray(values).save(source)
    assert (read_image(source, as_tensor=True) == 1).float().mean() > 0.9  # the silent wrong answer
    assert "high-bit-depth" in describe_image(source) and "to-8bit" in describe_image(source)
    assert folder_to_8bit(tmp_path / "raw", tmp_path / "fixed") == 1
    fixed = np.asarray(Image.open(tmp_path / "fixed" / "part.png"))
    np.testing.assert_array_equal(fixed, np.rint(values / 257.0).astype(np.uint8))


# --------------------------------------------------------------------------------- whole folders, end to end
class BatchShapes(Callback):
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        del trainer, pl_module, outputs, batch_idx
        self.shapes.append(tuple(batch.image.shape))


def test_mixed_modes_sizes_and_formats_train_end_to_end(tmp_path: Path) -> None:
    """One train folder with L/RGBA/P/RGB PNGs and JPEGs of six sizes (down to 8×8), and a batch of one."""
    root = tiny_data(tmp_path / "data")
    good = root / CATEGORY / "train" / "good"
    kinds = [("L", ".png", (8, 8)), ("RGBA", ".png", (40, 24)), ("P", ".png", (100, 60)), ("RGB", ".jpg", (31, 45)),
             ("L", ".jpg", (64, 64)), ("RGB", ".png", (17, 90))]
    for index, (mode, suffix, size) in enumerate(kinds):
        _save_mode(_rgb(index, size), mode, good / f"extra_{index}{suffix}")
    shapes = BatchShapes()
    model = make_model("unet_ae")
    fitted = engine(tmp_path / "run", callbacks=[shapes])
    local = datamodule(root, batch=4, cls=LocalMVTecAD)  # 8 + 6 = 14 images: batches of 4, 4, 4, 2
    fitted.fit(model, datamodule=local)
    assert len(local.train_data) == 14
    assert shapes.shapes == [(4, 3, 32, 32)] * 3 + [(2, 3, 32, 32)]
    metrics = fitted.test(model, datamodule=local, verbose=False)[0]
    assert all(0 <= metrics[k] <= 1 for k in ("image_AUROC", "pixel_AUROC"))
    # anomalib's own MVTecAD skips the JPEGs: the guard says so instead of staying silent.
    with pytest.warns(UserWarning, match=r"2 image file\(s\) in .*train/good are not used"):
        engine(tmp_path / "run2", max_steps=1).fit(make_model("unet_ae"), datamodule=datamodule(root))


def test_files_the_dataset_reads_are_not_reported_unused_with_a_relative_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder,
) -> None:
    """anomalib stores absolute sample paths; a relative ``root`` once made every file look unused."""
    tiny_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    relative = datamodule(Path("data"))
    relative.setup()
    check_datamodule(relative, "fit")
    assert not [w for w in recwarn if "not used" in str(w.message)]


def _truncate(category: Path) -> Path:
    path = category / "train" / "good" / "003.png"
    path.write_bytes(path.read_bytes()[:200])
    return path


def _not_an_image(category: Path) -> Path:
    path = category / "train" / "good" / "notes.png"
    path.write_text("exported from the line PC; not an image")
    return path


def _empty_train(category: Path) -> Path:
    for path in (category / "train" / "good").iterdir():
        path.unlink()
    return category / "train" / "good"


def _mask_size(category: Path) -> Path:
    path = sorted((category / "ground_truth" / "blob").iterdir())[0]
    Image.open(path).resize((40, 16)).save(path)
    return path


def _sixteen_bit(category: Path) -> Path:
    path = category / "test" / "good" / "001.png"
    Image.fromarray((np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 257)).save(path)
    return path


BROKEN = {
    "truncated": (_truncate, "corrupt or truncated"),
    "not_an_image": (_not_an_image, "not an image file"),
    "empty_train": (_empty_train, r"no training images: nothing found in .*train/good \(empty\)"),
    "mask_size": (_mask_size, r"is 40×16 but its image .* is 32×32"),
    "sixteen_bit": (_sixteen_bit, "high-bit-depth"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_stops_fit_before_training_naming_the_file(case: str, tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data")
    mutate, message = BROKEN[case]
    path = mutate(root / CATEGORY)
    model = make_model("unet_ae")
    start = time.monotonic()
    with pytest.raises(DataCheckError, match=message) as error:
        engine(tmp_path / "run").fit(model, datamodule=datamodule(root))
    assert str(path) in str(error.value)
    assert model.global_step == 0 and time.monotonic() - start < 10


@pytest.mark.parametrize("name", model_names())
def test_every_model_runs_the_pre_flight_check(name: str, tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data")
    path = _truncate(root / CATEGORY)
    with pytest.raises(DataCheckError, match=str(path)):
        engine(tmp_path / "run").fit(make_model(name), datamodule=datamodule(root))


def test_missing_category_folder_is_named_without_download(tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data")
    start = time.monotonic()
    expected = rf"category folder {root}/bottle not found \({root} holds: synthetic\)"
    with pytest.raises(FileNotFoundError, match=expected):
        engine(tmp_path / "run").fit(make_model("unet_ae"), datamodule=LocalMVTecAD(root=root, category="bottle"))
    assert time.monotonic() - start < 5


def test_defects_without_any_mask_are_a_documented_classification_skip(tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data")
    shutil.rmtree(root / CATEGORY / "ground_truth")
    model = make_model("unet_ae")
    fitted = engine(tmp_path / "run")
    with pytest.warns(UserWarning, match=rf"no masks under {root}/{CATEGORY}/ground_truth .*classification only"):
        local = datamodule(root, cls=LocalMVTecAD)
        fitted.fit(model, datamodule=local)
    metrics = fitted.test(model, datamodule=local, verbose=False)[0]
    assert 0 <= metrics["image_AUROC"] <= 1 and "pixel_AUROC" not in metrics


def test_defects_with_some_masks_missing_name_the_images(tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data")
    sorted((root / CATEGORY / "ground_truth" / "scratch").iterdir())[1].unlink()
    expected = rf"1 defect image\(s\) .*have no mask.*\n  {root}/{CATEGORY}/test/scratch/001.png"
    with pytest.raises(FileNotFoundError, match=expected):
        datamodule(root, cls=LocalMVTecAD).setup("fit")


def test_magnetic_tile_passes_as_is(magnetic_tile_subset: Path) -> None:
    """Real grayscale data of variable sizes: no error, no warning, and read as 3-channel images."""
    real = MVTecAD(root=magnetic_tile_subset, category="magnetic_tile", num_workers=0, val_split_mode="from_test")
    real.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning of the checks fails the test
        check_datamodule(real, "fit")
        check_datamodule(real, "test")
    described = [describe_image(p) for p in real.train_data.samples.image_path]
    assert {mode for _, mode in described} == {"L"} and len({size for size, _ in described}) > 1
    assert read_image(real.train_data.samples.image_path[0], as_tensor=True).shape[0] == 3


# ---------------------------------------------------------------------------------------------- input sizes
def _forward_both_modes(model: LightningModule, images: torch.Tensor) -> object:
    """One training-mode forward (a batch of one must train) and the eval-mode inference output."""
    model.model.train()
    if hasattr(model, "objective"):  # DistillClassifier: train objective, then Gaussians fitted on the features
        model.setup("fit")
        assert torch.isfinite(model.objective(images, ["x/train/good/0.png"] * len(images))["loss"])
        model.model.eval()
        features = model.model.student.features(torch.cat([images, images.flip(-1), images.flip(-2)]))
        count = len(features.embedding)
        index, keep = torch.zeros(count, dtype=torch.long), torch.ones(count, dtype=torch.bool)
        model.model.fit(StudentFeatures(*features), index, keep, 99.0)
    else:
        model.model(images)
        gaussian = getattr(model.model, "location_gaussian", None)
        if gaussian is not None:  # SimpleNet fits its per-location Gaussians at the start of fit
            with torch.no_grad():
                flips = [images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]  # it needs 4 images
                gaussian.fit([model.model.extract_features(torch.cat(flips))])
    model.model.eval()
    with torch.no_grad():
        return model.model(images)


@pytest.mark.parametrize("size", [70, (50, 72), 17], ids=["70", "50x72", "17"])
@pytest.mark.parametrize("name", model_names())
def test_sizes_not_divisible_by_the_stride_and_a_batch_of_one(name: str, size: int | tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = make_model(name, image_size=size)
    height, width = (size, size) if isinstance(size, int) else size
    output = _forward_both_modes(model, torch.rand(1, 3, height, width))
    assert output.pred_score.shape == (1,) and output.anomaly_map.shape == (1, 1, height, width)
    assert torch.isfinite(output.anomaly_map).all()


@pytest.mark.parametrize("name", model_names())
def test_too_small_image_size_names_the_argument(name: str) -> None:
    with pytest.raises(ValueError, match=r"image_size=\(16, 16\) is too small for anomaly_map_sigma=4.0"):
        make_model(name, image_size=16)
    make_model(name, image_size=16, anomaly_map_sigma=3.75)  # the fix the message offers


def test_unet_ae_one_cell_bottleneck_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"image_size=\(20, 20\) gives a 1×1 bottleneck \(depth=5\)"):
        make_model("unet_ae", image_size=20, depth=5)


@pytest.mark.parametrize("name", model_names())
def test_odd_size_fit_with_a_last_batch_of_one(name: str, tmp_path: Path) -> None:
    root = tiny_data(tmp_path / "data", n_train=5)  # batches of 4 and 1
    shapes = BatchShapes()
    model = make_model(name, image_size=(50, 72))
    engine(tmp_path / "run", callbacks=[shapes]).fit(model, datamodule=datamodule(root, batch=4))
    # SimpleNet trains from its feature cache, filled before the first epoch: its loader then skips the image
    # files and hands over 1×1 stand-ins (the features come from the cache, keyed by path).
    image_size = (1, 1) if name == "simplenet" else (50, 72)
    assert shapes.shapes == [(4, 3, *image_size), (1, 3, *image_size)]
    assert all(torch.isfinite(p).all() for p in model.parameters())

