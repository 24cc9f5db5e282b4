"""``LocalMVTecAD``: anomalib's MVTecAD datamodule for local folders — no download, clear errors, more formats.

anomalib's ``MVTecAD`` is built for the official download, and on a user's own folder in the same layout:

* a missing category folder starts a download of the whole MVTec AD archive (offline: a ``URLError`` that does
  not mention the folder; behind a slow proxy: a long wait);
* defect images without masks end in ``ValueError: Must have equal len keys and value ...``;
* only ``.png`` files are read: ``.jpg``/``.bmp``/``.tif`` images are skipped without a word.

``LocalMVTecAD`` takes the same arguments and gives instead: a ``FileNotFoundError`` naming the missing folder
(and listing the categories that are there); a ``FileNotFoundError`` naming the defect images without a mask,
unless *no* defect image has one, which is the documented skip: a warning, and a classification-only dataset
(image metrics; pixel metrics are skipped); and every common image format. Masks are matched by name,
``<image stem>.<ext>`` or ``<image stem>_mask.<ext>`` under ``ground_truth/<defect>/``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import LabelName, Split
from pandas import DataFrame

from .checks import IMAGE_SUFFIXES

_LISTED = 8


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _mask_for(image: Path, masks: dict[str, Path]) -> Path | None:
    return masks.get(image.stem) or masks.get(f"{image.stem}_mask")


def make_local_samples(category_root: Path, split: Split) -> DataFrame:
    """anomalib's samples table for ``category_root/{train,test}/<label>/*`` (any common image format).

    Raises:
        FileNotFoundError: some, but not all, defect images lack a mask (names them).
    """
    rows = []
    missing: list[str] = []
    any_mask = False
    for label_dir in sorted(p for p in (category_root / split.value).glob("*") if p.is_dir()):
        normal = label_dir.name == "good"
        masks_dir = category_root / "ground_truth" / label_dir.name
        masks = {p.stem: p for p in _images(masks_dir)}
        for image in _images(label_dir):
            mask = None if normal else _mask_for(image, masks)
            if not normal and mask is None:
                missing.append(str(image))
            any_mask = any_mask or mask is not None
            label_index = LabelName.NORMAL if normal else LabelName.ABNORMAL
            rows.append((str(category_root), split.value, label_dir.name, str(image), str(mask or ""), label_index))
    if missing and any_mask:
        more = f"\n  ... and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
        listed = "\n  ".join(missing[:_LISTED]) + more
        msg = (
            f"{len(missing)} defect image(s) under {category_root / split.value} have no mask in "
            f"{category_root / 'ground_truth'}/<defect>/ (expected <stem>.png or <stem>_mask.png):\n  {listed}"
        )
        raise FileNotFoundError(msg)
    if missing:
        warnings.warn(
            f"no masks under {category_root / 'ground_truth'} for the {len(missing)} defect images of "
            f"{category_root / split.value}: classification only (image metrics; pixel metrics are skipped)",
            stacklevel=2,
        )
    columns = ["path", "split", "label", "image_path", "mask_path", "label_index"]
    samples = DataFrame(rows, columns=columns)
    samples.attrs["task"] = "segmentation" if any_mask else "classification"
    return samples


class LocalDataset(MVTecADDataset):
    """An ``MVTecADDataset`` whose samples come from :func:`make_local_samples` (any format, clear errors)."""

    def __init__(self, root: Path, category: str, split: Split) -> None:
        super(MVTecADDataset, self).__init__(augmentations=None)  # skip MVTecADDataset's .png-only scan
        self.root_category = Path(root) / category
        self.category = category
        self.split = split
        self.samples = make_local_samples(self.root_category, split)


class LocalMVTecAD(MVTecAD):
    """:class:`anomalib.data.MVTecAD` for local data: never downloads; see the module docstring."""

    def prepare_data(self) -> None:
        """Check that the category folder exists (nothing is downloaded)."""
        folder = self.root / self.category
        if folder.is_dir():
            return
        if self.root.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            where = f"{self.root} holds: {', '.join(present) or 'no folders'}"
        else:
            where = f"{self.root} does not exist either"
        msg = f"category folder {folder} not found ({where}); LocalMVTecAD does not download anything"
        raise FileNotFoundError(msg)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = LocalDataset(self.root, self.category, Split.TRAIN)
        self.test_data = LocalDataset(self.root, self.category, Split.TEST)
