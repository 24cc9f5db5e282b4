"""Benchmark data: an MVTec-layout datamodule (optionally a deterministic subset) and the raw test images.

Every variant is measured on the *raw* test images (original size, as a user would pass them): the exported
graphs resize inside, and the torch model's ``forward`` does the same through its pre-processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image, read_mask

from anomalib_simplenet.components.resize import AntialiasedResize
from anomalib_simplenet.data import subset


@dataclass
class TestSample:
    """One raw test image: ``image`` ``(3, H, W)`` float in [0, 1], ``mask`` ``(H, W)`` uint8 or ``None``."""

    path: Path
    image: torch.Tensor
    label: int
    mask: torch.Tensor | None


def make_subset(source: Path, category: str, target: Path, max_train: int | None, max_test: int | None) -> Path:
    """Linked subset of ``source/category`` under ``target/category``: ``max_train`` normal training images
    and ``max_test`` test images shared evenly over the test folders (with their masks). Returns ``target``."""
    origin = source / category
    if not (origin / "train").is_dir() or not (origin / "test").is_dir():
        msg = f"--data-root: {origin} is not an MVTec-layout category (needs train/ and test/)"
        raise FileNotFoundError(msg)
    folders = [p for p in (origin / "test").iterdir() if p.is_dir()]
    share = None if max_test is None else max(1, max_test // len(folders))
    return subset.make_subset(origin, target / category, max_train, test_good=share, test_defects=share)


def build_datamodule(
    root: Path,
    category: str,
    image_size: tuple[int, int],
    batch_size: int = 8,
    num_workers: int = 0,
    val_split_ratio: float = 0.5,
    seed: int = 0,
) -> MVTecAD:
    """MVTecAD datamodule whose validation split is taken from the test folder (disjoint from the test split).

    The dataset resizes with the model's filter (``AntialiasedResize``) so variable-size images batch, also when
    no trainer links the datamodule to the model (e.g. calibration after loading a checkpoint).
    """
    return MVTecAD(
        root=root,
        category=category,
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=num_workers,
        augmentations=AntialiasedResize(image_size),
        val_split_mode="from_test",
        val_split_ratio=val_split_ratio,
        seed=seed,
    )


def load_test_samples(datamodule: MVTecAD) -> list[TestSample]:
    """The test split's images at their original size, with labels and masks."""
    datamodule.setup("test")
    samples = []
    for row in datamodule.test_data.samples.itertuples():
        mask_path = getattr(row, "mask_path", "") or ""
        mask = read_mask(mask_path, as_tensor=True) if int(row.label_index) == 1 and mask_path else None
        image = read_image(row.image_path, as_tensor=True)
        if mask is None:
            mask = torch.zeros(image.shape[-2:], dtype=torch.uint8)
        samples.append(TestSample(Path(row.image_path), image, int(row.label_index), mask))
    return samples
