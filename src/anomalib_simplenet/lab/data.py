"""Data of every measurement: one subset rule, the datamodule factories (validation: a seeded part of the test
folder, disjoint from the test split), the raw test images."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.data import MVTecAD
from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import Split, read_image, read_mask

from anomalib_simplenet.components.resize import AntialiasedResize
from anomalib_simplenet.data.local import LocalDataset, LocalMVTecAD
from anomalib_simplenet.data.multi_category import MultiCategoryMVTec
from anomalib_simplenet.data.subset import make_subset
from anomalib_simplenet.data.synthetic import make_synthetic_mvtec


def test_share(category_dir: Path, max_test: int | None) -> int | None:
    """Images per test sub-folder so that about ``max_test`` test images are taken (``None``: all)."""
    if max_test is None:
        return None
    return max(1, max_test // max(1, sum(p.is_dir() for p in (category_dir / "test").iterdir())))


def subset(
    root: Path, category: str, target: Path, max_train: int | None = None, max_test: int | None = None,
    test_good: int | None = None, test_defects: int | None = None, defects: Sequence[str] | None = None,
) -> Path:
    """Evenly spaced files of ``root/category`` linked as ``target/category``; returns ``target``. ``max_test`` is
    shared evenly over the test sub-folders; ``test_good`` / ``test_defects`` (per defect type) set the counts apart."""
    origin = root / category
    if not (origin / "train").is_dir() or not (origin / "test").is_dir():
        msg = f"--data-root/--category: {origin} is not an MVTec-layout category (needs train/ and test/)"
        raise FileNotFoundError(msg)
    if max_test is not None:
        test_good = test_defects = test_share(origin, max_test)
    return make_subset(origin, target / category, max_train, test_good, test_defects, defects)


def datamodule(
    root: Path, category: str, image_size: tuple[int, int] | None = None, batch_size: int = 8, seed: int = 0,
    val_split_ratio: float = 0.5, eval_batch_size: int | None = None, num_workers: int = 0,
    cls: type[MVTecAD] = LocalMVTecAD, **kwargs: Any,  # noqa: ANN401
) -> MVTecAD:
    """One category, validated on a seeded ``val_split_ratio`` of the test folder; with ``image_size`` the dataset
    resizes with the models' own filter (images of any size batch without a model). ``cls``: another MVTecAD class."""
    return cls(
        root=root, category=category, train_batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size,
        num_workers=num_workers, augmentations=AntialiasedResize(image_size) if image_size else None,
        val_split_mode="from_test", val_split_ratio=val_split_ratio, seed=seed, **kwargs,
    )


class LocalMultiCategory(MultiCategoryMVTec):
    """:class:`MultiCategoryMVTec` over local folders (any image format; categories without masks allowed)."""

    def category_dataset(self, category: str, split: Split) -> MVTecADDataset:
        return LocalDataset(self.root, category, split)


def union_datamodule(
    root: Path, categories: Sequence[str], image_size: tuple[int, int], batch_size: int, seed: int
) -> LocalMultiCategory:
    """All categories at once (classes = categories), validated on a seeded fifth of the training images: a split
    of the union's test folders would mix the categories' test images into validation."""
    return LocalMultiCategory(
        root=root, categories=list(categories), train_batch_size=batch_size, eval_batch_size=batch_size,
        num_workers=0, augmentations=AntialiasedResize(image_size), val_split_mode="from_train",
        val_split_ratio=0.2, seed=seed,
    )


def prepare_categories(
    source: Path | None, categories: Sequence[str], target: Path, max_train: int | None, max_test: int | None,
    synthetic_size: int = 128,
) -> tuple[Path, list[str]]:
    """:func:`subset` of each category under ``target``; returns ``(target, notes)``. A category missing under
    ``source`` (or ``source=None``) is generated synthetic instead (seeded by its position), and its note says so."""
    notes = []
    for index, category in enumerate(categories):
        origin = source / category if source is not None else None
        if origin is not None and origin.is_dir():
            share = test_share(origin, max_test)
            subset(source, category, target, max_train, max_test)
            train = "all" if max_train is None else f"≤{max_train}"
            test = "all test images" if share is None else f"≤{share} test images per sub-folder"
            notes.append(f"{category}: {origin} ({train} training images, {test})")
        else:
            n_train, per_folder = max_train or 60, max(2, (max_test or 30) // 3)
            make_synthetic_mvtec(target, category=category, image_size=synthetic_size, n_train=n_train,
                                 n_test_good=per_folder, n_test_defect=per_folder, seed=index)
            why = "no --data-root" if origin is None else f"no folder {origin}"
            notes.append(f"{category}: generated synthetic data ({n_train} train, {per_folder} per test folder); {why}")
    return target, notes


@dataclass
class TestSample:
    """One raw test image: ``image`` ``(3, H, W)`` float in [0, 1], ``mask`` ``(H, W)`` uint8 (zeros if normal)."""

    path: Path
    image: torch.Tensor
    label: int
    mask: torch.Tensor


def load_test_samples(data: LocalMVTecAD) -> list[TestSample]:
    """The test split's images at their original size (as a user passes them), with labels and masks."""
    data.setup("test")
    samples = []
    for row in data.test_data.samples.itertuples():
        image, label = read_image(row.image_path, as_tensor=True), int(row.label_index)
        mask_path = (getattr(row, "mask_path", "") or "") if label == 1 else ""
        mask = read_mask(mask_path, as_tensor=True) if mask_path else torch.zeros(image.shape[-2:], dtype=torch.uint8)
        samples.append(TestSample(Path(row.image_path), image, label, mask))
    return samples


def images_by_label(
    batches: Iterable, n_normal: int, n_anomalous: int, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first ``n_normal`` normal and ``n_anomalous`` anomalous images ``(3, H, W)`` of ``batches``;
    ``transform`` (e.g. a model's ``pre_processor.transform``) is applied per batch, so sizes may differ."""
    normal: list[torch.Tensor] = []
    anomalous: list[torch.Tensor] = []
    for batch in batches:
        images = transform(batch.image) if transform is not None else batch.image
        for image, label in zip(images, batch.gt_label, strict=True):
            group, wanted = (anomalous, n_anomalous) if int(label) else (normal, n_normal)
            if len(group) < wanted:
                group.append(image)
        if len(normal) >= n_normal and len(anomalous) >= n_anomalous:
            break
    return normal, anomalous
