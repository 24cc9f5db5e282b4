"""The study's data: a deterministic subset of each category (or generated synthetic categories) and datamodules.

Per category, ``val_split_mode="from_test"`` moves a seeded, label-aware half of the test folder into a validation
split (normal and defective images); the settings are chosen on it and the test split is only ever reported. The
all-categories model validates its loss on held-out *training* images (``from_train``): the per-category splits
are drawn per category, so a split of the union would mix their test images into its validation set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import Split

from anomalib_simplenet.components.resize import AntialiasedResize
from anomalib_simplenet.data.local import LocalDataset, LocalMVTecAD
from anomalib_simplenet.data.multi_category import MultiCategoryMVTec
from anomalib_simplenet.data.subset import make_subset
from anomalib_simplenet.data.synthetic import make_synthetic_mvtec


def prepare_categories(
    source: Path | None,
    categories: Sequence[str],
    target: Path,
    max_train: int | None,
    max_test: int | None,
    synthetic_size: int = 128,
) -> tuple[Path, list[str]]:
    """Subsets of ``source/<category>`` under ``target`` (hard links); return ``(root, notes)``.

    ``max_test`` images of the test folder are shared evenly over its sub-folders. A category missing under
    ``source`` (or ``source=None``) is generated with :func:`make_synthetic_mvtec` instead (seeded by its
    position, so two synthetic categories differ), and the note says so.
    """
    notes = []
    for index, category in enumerate(categories):
        origin = source / category if source is not None else None
        if origin is not None and origin.is_dir():
            folders = [p for p in (origin / "test").iterdir() if p.is_dir()]
            share = None if max_test is None else max(1, max_test // max(1, len(folders)))
            make_subset(origin, target / category, max_train, test_good=share, test_defects=share)
            train = "all" if max_train is None else f"≤{max_train}"
            test = "all test images" if share is None else f"≤{share} test images per sub-folder"
            notes.append(f"{category}: {origin} ({train} training images, {test})")
        else:
            n_train = max_train or 60
            per_folder = max(2, (max_test or 30) // 3)
            make_synthetic_mvtec(target, category=category, image_size=synthetic_size, n_train=n_train,
                                 n_test_good=per_folder, n_test_defect=per_folder, seed=index)
            why = "no --data-root" if origin is None else f"no folder {origin}"
            notes.append(f"{category}: generated synthetic data ({n_train} train, {per_folder} per test folder); {why}")
    return target, notes


def category_datamodule(
    root: Path, category: str, image_size: tuple[int, int], batch_size: int, seed: int
) -> LocalMVTecAD:
    """One category; validation = a seeded half of the test folder, disjoint from the test split.

    The dataset resizes with the models' own filter, so images of any size batch and masks keep their image's size.
    """
    return LocalMVTecAD(
        root=root, category=category, train_batch_size=batch_size, eval_batch_size=batch_size, num_workers=0,
        augmentations=AntialiasedResize(image_size), val_split_mode="from_test", val_split_ratio=0.5, seed=seed,
    )


class LocalMultiCategory(MultiCategoryMVTec):
    """:class:`MultiCategoryMVTec` over local folders (any image format; categories without masks allowed)."""

    def category_dataset(self, category: str, split: Split) -> MVTecADDataset:
        """The category's split read by :class:`LocalDataset`."""
        return LocalDataset(self.root, category, split)


def union_datamodule(
    root: Path, categories: Sequence[str], image_size: tuple[int, int], batch_size: int, seed: int
) -> LocalMultiCategory:
    """All categories at once (classes = categories); validation loss on a seeded fifth of the training images."""
    return LocalMultiCategory(
        root=root, categories=list(categories), train_batch_size=batch_size, eval_batch_size=batch_size,
        num_workers=0, augmentations=AntialiasedResize(image_size), val_split_mode="from_train",
        val_split_ratio=0.2, seed=seed,
    )
