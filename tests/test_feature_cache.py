"""Frozen-backbone feature cache: same features and loss curve as recomputing, and the fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data.datasets.base import image as image_dataset
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from torchvision.transforms import v2

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.resize import AntialiasedResize
from anomalib_simplenet.lab import data as lab_data
from anomalib_simplenet.models.simplenet.feature_cache import FeatureCache, TrainingFeatureCache, cache_mode
from anomalib_simplenet.models.simplenet.fit_caches import FitFeatureCaches
from anomalib_simplenet.models.simplenet.training_data import (
    ImagelessItems,
    fetch_in_process,
    random_steps,
    read_only_uncached_images,
    uncacheable_reason,
)

from .conftest import TINY_SIMPLENET

LOGGER = "anomalib_simplenet.models.simplenet.feature_cache"


class _StepLosses(Callback):
    """Training loss of every step, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(root: Path, tmp: Path, feature_cache: bool | str, epochs: int = 3,
         dtype: str = "float32") -> tuple[SimpleNet, list[float]]:
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET, feature_cache=feature_cache, feature_cache_dtype=dtype)
    recorder = _StepLosses()
    engine = Engine(max_epochs=epochs, default_root_dir=tmp, accelerator="cpu", logger=False,
                    enable_progress_bar=False, callbacks=[recorder], limit_val_batches=0)
    engine.fit(model, datamodule=lab_data.datamodule(root, "synthetic"))
    return model, recorder.losses


def test_cached_training_has_the_same_loss_curve(synthetic_root: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Shuffled batches, fresh noise each step: the loss sequence with the cache equals the one without, and
    cached batches neither read their image files nor go through the pre-processor's resize."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    transformed: list[int] = []
    resize = PreProcessor.on_train_batch_start
    read_files: list[str] = []
    read = image_dataset.read_image

    def counting(self, trainer, pl_module, batch, batch_idx) -> None:
        transformed.append(batch_idx)
        resize(self, trainer, pl_module, batch, batch_idx)

    def counting_read(path, *args, **kwargs):
        read_files.append(str(path))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(PreProcessor, "on_train_batch_start", counting)
    monkeypatch.setattr(image_dataset, "read_image", counting_read)
    cached_model, cached = _fit(synthetic_root, tmp_path / "cached", "memory")
    assert transformed == []
    assert len(read_files) == len(set(read_files)) == 16, "only the first pass reads the 16 training images"
    read_files.clear()
    plain_model, plain = _fit(synthetic_root, tmp_path / "plain", False)
    assert len(transformed) == 6
    assert len(read_files) == 16 + 48, "without a cache every epoch reads every image"
    assert len(cached) == len(plain) == 6  # 16 images, batch 8, 3 epochs
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    assert len(set(cached)) == len(cached), "noise must be drawn fresh every step"
    # The backbone saw each of the 16 images once (the feature-scale pass at the start of fit filled the cache),
    # and all three epochs were served from the cache.
    assert cached_model.training_features.computed_images == 16
    assert cached_model.training_features.served_images == 48
    assert plain_model.training_features.computed_images == 16 + 48  # without a cache the scale pass is extra
    assert "Feature cache on (memory" in caplog.text
    assert not cached_model.training_features.active, "the cache is freed when fitting ends"
    for name, value in plain_model.model.state_dict().items():
        torch.testing.assert_close(cached_model.model.state_dict()[name], value, rtol=1e-3, atol=1e-5)


def test_cache_serves_the_features_it_stored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET).model.eval()
    images = torch.rand(4, 3, 64, 64)
    keys = [f"img{i}.png" for i in range(4)]
    features = model.extract_features(images)
    for directory in (None, tmp_path / "features"):
        cache = FeatureCache(max_bytes=2**30, directory=directory)
        assert cache.put(keys, features)
        served = cache.get(list(reversed(keys)) + ["unknown.png"])
        assert served[-1] is None
        torch.testing.assert_close(torch.stack(served[:-1]), features.flip(0), rtol=0, atol=0)
        cache.clear()
        assert len(cache) == 0 and cache.get(keys) == [None] * 4
    assert not list((tmp_path / "features").iterdir()), "clear() deletes the cache files"


def test_float16_cache_halves_the_bytes_and_serves_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    features = SimpleNet(**TINY_SIMPLENET).model.eval().extract_features(torch.rand(4, 3, 64, 64))
    keys = [f"img{i}.png" for i in range(4)]
    full, half = FeatureCache(max_bytes=2**30), FeatureCache(max_bytes=2**30, dtype=torch.float16)
    assert full.put(keys, features) and half.put(keys, features)
    assert half.nbytes * 2 == full.nbytes == features.numel() * 4
    served = torch.stack(half.get(keys))
    assert served.dtype == torch.float32
    torch.testing.assert_close(served, features, rtol=2**-10, atol=1e-6)
    assert not torch.equal(served, features), "float16 storage rounds: otherwise this test checks nothing"
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainingFeatureCache(lambda images: images, dtype="int8")


def test_float16_cache_keeps_the_loss_curve(synthetic_root: Path, tmp_path: Path) -> None:
    """Rounding the cached features to float16 moves the training loss by far less than training changes it."""
    half_model, half = _fit(synthetic_root, tmp_path / "half", "memory", dtype="float16")
    _, full = _fit(synthetic_root, tmp_path / "full", "memory")
    assert half_model.training_features.served_images == 48
    torch.testing.assert_close(torch.tensor(half), torch.tensor(full), rtol=1e-2, atol=1e-4)
    assert abs(full[0] - full[-1]) > 100 * max(abs(a - b) for a, b in zip(half, full, strict=True))


def test_partly_cached_batch_mixes_cache_and_fresh_features() -> None:
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET).model.eval()
    images = torch.rand(4, 3, 64, 64)
    keys = [f"img{i}.png" for i in range(4)]
    training = TrainingFeatureCache(model.extract_features, mode="memory")
    training.start(SimpleNamespace(datamodule=SimpleNamespace(train_data=SimpleNamespace(augmentations=None))))
    training(images[:2], keys[:2])
    mixed = training(images[[3, 0, 2, 1]], [keys[3], keys[0], keys[2], keys[1]])
    torch.testing.assert_close(mixed, model.extract_features(images[[3, 0, 2, 1]]), rtol=1e-4, atol=1e-5)
    assert (training.computed_images, training.served_images) == (4, 2)


def test_disk_mode_uses_and_removes_a_temporary_folder() -> None:
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET).model.eval()
    images, keys = torch.rand(2, 3, 64, 64), ["a.png", "b.png"]
    training = TrainingFeatureCache(model.extract_features, mode="disk")
    training.start(SimpleNamespace(datamodule=SimpleNamespace(train_data=SimpleNamespace(augmentations=None))))
    first = training(images, keys)
    folder = training.cache.directory
    assert training.cache.storage == "disk" and len(list(folder.glob("*.pt"))) == 2
    torch.testing.assert_close(training(images.flip(0), keys[::-1]), first.flip(0), rtol=0, atol=0)
    assert training.served_images == 2
    training.stop()
    assert not folder.exists()


def test_bound_refuses_entries_and_whole_set_fallback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    features = torch.zeros(3, 8, 4, 4)  # 512 bytes each
    cache = FeatureCache(max_bytes=1100)
    assert cache.put(["a", "b"], features[:2])
    assert not cache.put(["c"], features[2:]), "a third entry would exceed the bound"
    assert len(cache) == 2 and cache.nbytes == 1024

    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET).model.eval()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_data=SimpleNamespace(augmentations=None)),
                              train_dataloader=SimpleNamespace(dataset=list(range(200))))
    training = TrainingFeatureCache(model.extract_features, mode="auto", max_bytes=2**20)  # 1 MiB < 200 × 64 KiB
    training.start(trainer)
    assert training.active
    out = training(torch.rand(2, 3, 64, 64), ["x.png", "y.png"])
    assert out.shape == (2, 256, 8, 8)
    assert not training.active
    assert "would not fit: 200 images" in training.reason and "feature_cache_max_gb" in training.reason
    assert "Feature cache off: the cache would not fit" in caplog.text


def test_fallback_when_augmentations_are_on(synthetic_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    datamodule.train_augmentations = v2.Compose([v2.RandomHorizontalFlip(), v2.Resize((64, 64))])
    datamodule.setup()
    trainer = SimpleNamespace(datamodule=datamodule)
    assert uncacheable_reason(trainer) == "training augmentations are on (RandomHorizontalFlip)"
    caplog.set_level(logging.INFO, logger=LOGGER)
    training = TrainingFeatureCache(lambda images: images, mode="auto")
    training.start(trainer)
    assert not training.active
    assert "Feature cache off: training augmentations are on (RandomHorizontalFlip)" in caplog.text
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.INFO]
    caplog.clear()
    TrainingFeatureCache(lambda images: images, mode="memory").start(trainer)  # asked for: a warning
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]

    datamodule.train_augmentations = None
    datamodule._update_augmentations()
    assert uncacheable_reason(trainer) is None
    assert uncacheable_reason(trainer, stage="val") is None
    datamodule.val_augmentations = v2.Compose([v2.RandomVerticalFlip(), v2.Resize((64, 64))])
    datamodule._update_augmentations()
    assert uncacheable_reason(trainer, stage="val") == "validation augmentations are on (RandomVerticalFlip)"
    assert uncacheable_reason(trainer) is None, "the training images' cache does not depend on validation's"
    with pytest.raises(ValueError, match="stage"):
        uncacheable_reason(trainer, stage="test")
    assert "not an anomalib dataset" in uncacheable_reason(SimpleNamespace(datamodule=None, train_dataloader=None))


def test_deterministic_transform_detection() -> None:
    deterministic = v2.Compose([AntialiasedResize((64, 64)), v2.Normalize([0.5] * 3, [0.2] * 3), v2.CenterCrop(60)])
    assert random_steps(deterministic) == []
    assert random_steps(None) == []
    assert random_steps(v2.Compose([deterministic, v2.ColorJitter(0.1), v2.Lambda(lambda x: x)])) == [
        "ColorJitter", "Lambda"]


def test_loader_skips_only_the_files_of_cached_images(synthetic_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached images come as stand-ins with their own path and label; the others are read; undo reads all."""
    datamodule = lab_data.datamodule(synthetic_root, "synthetic", batch_size=4)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    dataset = loader.dataset
    paths = list(dataset.samples.image_path)
    read_files: list[str] = []
    read = image_dataset.read_image
    monkeypatch.setattr(image_dataset, "read_image", lambda path, *a, **k: read_files.append(path) or read(path, *a, **k))
    training = TrainingFeatureCache(lambda images: images, mode="memory")
    training.cache = FeatureCache(2**20)
    training.cache.put(paths[:12], torch.zeros(12, 2, 1, 1))
    assert training.skip_cached_images(loader)
    assert not training.skip_cached_images(loader), "installed once"
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=loader.collate_fn))
    assert sorted(read_files) == sorted(paths[12:]), "exactly the uncached images are read"
    assert [path for batch in batches for path in batch.image_path] == paths
    assert all(int(label) == 0 for batch in batches for label in batch.gt_label)
    assert batches[0].image.shape == (4, 3, 1, 1)  # a cached batch: stand-ins, nothing decoded
    assert batches[-1].image.shape[-2:] == dataset[len(paths) - 1].image.shape[-2:]  # an uncached batch: real images
    read_files.clear()
    training.stop()
    assert "__getitems__" not in vars(dataset)
    [dataset[i] for i in range(4)]
    assert len(read_files) == 4

    class OwnReading(type(dataset)):
        def __getitem__(self, index):  # a dataset that reads its items its own way is left alone
            return super().__getitem__(index)

    dataset.__class__ = OwnReading
    assert read_only_uncached_images(loader, paths) is None
    assert read_only_uncached_images(object(), paths) is None


def test_loader_fetches_in_process_once_every_image_is_cached(synthetic_root: Path) -> None:
    """Worker processes would be forked every epoch only to hand out stand-ins: a loader whose every image is
    cached fetches in this process until the cache stops; one with an uncached image keeps its workers."""
    datamodule = lab_data.datamodule(synthetic_root, "synthetic", batch_size=4, num_workers=2)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    paths = list(loader.dataset.samples.image_path)
    partial = TrainingFeatureCache(lambda images: images, mode="memory")
    partial.cache = FeatureCache(2**20)
    partial.cache.put(paths[:-1], torch.zeros(len(paths) - 1, 2, 1, 1))
    assert partial.skip_cached_images(loader)
    assert loader.num_workers == 2, "the uncached image is still decoded by a worker"
    partial.stop()
    full = TrainingFeatureCache(lambda images: images, mode="memory")
    full.cache = FeatureCache(2**20)
    full.cache.put(paths, torch.zeros(len(paths), 2, 1, 1))
    assert full.skip_cached_images(loader)
    assert loader.num_workers == 0
    batches = list(loader)
    assert sorted(path for batch in batches for path in batch.image_path) == sorted(paths)
    assert all(batch.image.shape[-2:] == (1, 1) for batch in batches)
    full.stop()
    assert loader.num_workers == 2
    assert "__getitems__" not in vars(loader.dataset)
    persistent = torch.utils.data.DataLoader(loader.dataset, num_workers=1, persistent_workers=True)
    assert fetch_in_process(persistent) is None, "persistent workers are started once already"
    assert persistent.num_workers == 1
    assert fetch_in_process(torch.utils.data.DataLoader(loader.dataset)) is None


class _ValidationBatches(Callback):
    """What every validation epoch's batches carried after pre-processing, and what the model predicted."""

    def __init__(self) -> None:
        self.epochs: list[list[dict[str, torch.Tensor | list[str]]]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.epochs[-1].append({"paths": list(batch.image_path), "image_size": torch.tensor(batch.image.shape[-2:]),
                                "mask": batch.gt_mask.clone(), "map": batch.anomaly_map.clone()})


def _fit_validating(root: Path, tmp: Path) -> tuple[SimpleNet, _ValidationBatches]:
    torch.manual_seed(0)
    model, batches = SimpleNet(**TINY_SIMPLENET, feature_cache="memory"), _ValidationBatches()
    engine = Engine(max_epochs=3, default_root_dir=tmp, accelerator="cpu", logger=False, enable_progress_bar=False,
                    callbacks=[batches])
    engine.fit(model, datamodule=lab_data.datamodule(root, "synthetic", eval_batch_size=4))
    return model, batches


def test_validation_reads_its_images_once_and_keeps_masks_and_predictions(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the second validation on, the validation images' files are not decoded; their masks (anomalous and
    normal) reach the post-processor at the model's size as before, and predictions and the fitted thresholds
    equal those of a fit that reads every image every epoch."""
    read_files: list[str] = []
    read = image_dataset.read_image
    monkeypatch.setattr(image_dataset, "read_image", lambda path, *a, **k: read_files.append(str(path)) or read(path, *a, **k))
    skipping, skipped = _fit_validating(synthetic_root, tmp_path / "skipping")
    validation_paths = {path for batch in skipped.epochs[0] for path in batch["paths"]}
    assert len(validation_paths) == 9  # half of the 18 test images
    assert sum(path in validation_paths for path in read_files) == 9, "each validation image decoded once"

    read_files.clear()
    monkeypatch.setattr(FitFeatureCaches, "skip_cached_validation_images", lambda self, trainer: None)
    reading, read_every_epoch = _fit_validating(synthetic_root, tmp_path / "reading")
    assert sum(path in validation_paths for path in read_files) == 27, "without skipping: every epoch"
    assert len(skipped.epochs) == len(read_every_epoch.epochs) == 3
    for epoch, reference in zip(skipped.epochs, read_every_epoch.epochs, strict=True):
        for batch, expected in zip(epoch, reference, strict=True):
            assert batch["paths"] == expected["paths"]
            assert batch["image_size"].tolist() == [64, 64]
            torch.testing.assert_close(batch["mask"], expected["mask"], rtol=0, atol=0)
            torch.testing.assert_close(batch["map"], expected["map"])
    assert any(batch["mask"].any() for batch in skipped.epochs[-1]), "anomalous masks reach the last validation"
    for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        torch.testing.assert_close(getattr(skipping.post_processor, name), getattr(reading.post_processor, name))
    assert "__getitems__" not in vars(skipping.trainer.datamodule.val_data), "test images are read again after fit"


def test_validation_stand_ins_carry_the_masks_the_dataset_gives(synthetic_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the dataset's own resize (as for images of mixed sizes), a stand-in item's mask equals the real
    item's, for normal and anomalous images, and its image has the real item's size; no image is decoded."""
    datamodule = lab_data.datamodule(synthetic_root, "synthetic", image_size=(48, 40))
    datamodule.setup()
    dataset = datamodule.val_data
    real = [dataset[index] for index in range(len(dataset))]
    monkeypatch.setattr(image_dataset, "read_image", lambda *args, **kwargs: pytest.fail("an image was decoded"))
    stand_ins = ImagelessItems(dataset, set(dataset.samples.image_path), keep_masks=True)(list(range(len(dataset))))
    assert {int(item.gt_label) for item in stand_ins} == {0, 1}
    for item, expected in zip(stand_ins, real, strict=True):
        assert item.image_path == expected.image_path and int(item.gt_label) == int(expected.gt_label)
        assert item.image.shape == expected.image.shape == (3, 48, 40)
        torch.testing.assert_close(item.gt_mask, expected.gt_mask, rtol=0, atol=0)
    assert any(item.gt_mask.any() for item in stand_ins)


def test_cache_arguments_are_checked() -> None:
    assert cache_mode(True) == "memory" and cache_mode(False) == "off" and cache_mode("disk") == "disk"
    with pytest.raises(ValueError, match="feature_cache"):
        cache_mode("gpu")
    with pytest.raises(ValueError, match="feature_cache_max_gb"):
        SimpleNet(**TINY_SIMPLENET, feature_cache_max_gb=0)
