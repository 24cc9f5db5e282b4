"""Pre-flight checks of an anomalib datamodule's image and mask files, before any training step.

anomalib reads images with ``PIL.Image.open(path).convert("RGB")`` and masks with ``convert("L")``. That handles
grayscale (``L``), ``RGBA`` (alpha dropped), palette (``P``), 1-bit, ``CMYK`` and 8/16-bit RGB files correctly,
and the datamodule resizes images of any size to the model's input size. It goes wrong, late or silently, on:

* 16-bit grayscale (PIL mode ``I;16``), 32-bit integer (``I``) and float (``F``) images: ``convert`` clips them
  to 8 bits, so a 16-bit image becomes almost all white — a silent wrong answer. Refused here, naming the files;
  ``python -m anomalib_simplenet.data.checks to-8bit SRC DST`` writes correctly scaled 8-bit copies.
* truncated or corrupt files: ``OSError: image file is truncated`` (no file name) at the first batch that
  holds them, possibly hours into training. Found here, named.
* files that are not images but carry an image extension: found here (anomalib names them, but only when read).
* a mask whose size differs from its image: anomalib resizes both to the model size, so the mask silently no
  longer lines up. Refused here, naming both files.
* an empty training split (e.g. an empty ``train/good``): anomalib fails with
  ``num_samples should be a positive integer value``. Refused here, naming the folder.
* image files the dataset does not read (``MVTecAD`` reads ``.png`` only, so ``.jpg`` files are skipped without
  a word): a warning naming the folder and the count.

Header reads and PNG checksums are fast (about 1 s for the 1,736 files of magnetic_tile); results are cached
per file (path, size, modification time), so repeated ``fit``/``test`` calls re-check nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# PIL modes that ``convert("RGB")`` clips to 8 bits (the image's information is lost, not rescaled).
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_MAX_LISTED = 8
_cache: dict[tuple[str, int, int], tuple[tuple[int, int], str] | str] = {}


class DataCheckError(ValueError):
    """An image or mask file, or a whole split, that would give a crash late in training or a wrong answer."""


def _describe(path: Path) -> tuple[tuple[int, int], str] | str:
    """``((width, height), mode)`` of a readable image file, or the problem as text."""
    try:
        with Image.open(path) as image:
            size, mode, image_format = image.size, image.mode, image.format
            if image_format == "PNG":
                image.verify()  # chunk checksums up to IEND: catches truncation without decoding
            elif image_format != "JPEG":
                image.load()
    except UnidentifiedImageError:
        return "not an image file PIL can read"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"corrupt or truncated ({error})"
    if image_format == "JPEG" and not _jpeg_complete(path):
        return "truncated JPEG (decoding fails)"
    return size, mode


def _high_bit_depth(mode: str) -> str | None:
    if mode in HIGH_BIT_DEPTH_MODES:
        return (
            f"{'float' if mode == 'F' else 'high-bit-depth'} grayscale image (PIL mode {mode}) that anomalib would "
            f"clip to 8 bits ({'mostly black' if mode == 'F' else 'mostly white'}); convert it first: "
            "python -m anomalib_simplenet.data.checks to-8bit SRC DST"
        )
    return None


def _jpeg_complete(path: Path) -> bool:
    """True if the JPEG ends with its end-of-image marker or, failing that, decodes fully (slower, rare)."""
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 64))
        if file.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            return True
    try:
        with Image.open(path) as image:
            image.load()
    except OSError:
        return False
    return True


def describe_image(path: str | Path, mask: bool = False) -> tuple[tuple[int, int], str] | str:
    """``((width, height), PIL mode)`` of an image file anomalib can read correctly, else the problem as text.

    With ``mask=True`` high bit depths pass: anomalib only tests mask pixels for ``> 0``, which clipping keeps.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return "file not found"
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _describe(path)
    described = _cache[key]
    if mask or isinstance(described, str):
        return described
    return _high_bit_depth(described[1]) or described


def _is_set(value: Any) -> bool:  # noqa: ANN401 (a dataframe cell: a path, "", None or NaN)
    return isinstance(value, (str, Path)) and str(value) != ""


def sample_problems(samples: Any) -> list[str]:  # noqa: ANN401 (a pandas DataFrame)
    """Problems of an anomalib ``samples`` table (columns ``image_path``, optional ``mask_path``), one line each."""
    problems = []
    masks = samples["mask_path"] if "mask_path" in samples.columns else [None] * len(samples)
    for image_path, mask_path in zip(samples["image_path"], masks, strict=True):
        image = describe_image(image_path)
        if isinstance(image, str):
            problems.append(f"{image_path}: {image}")
            continue
        if not _is_set(mask_path):
            continue
        mask = describe_image(mask_path, mask=True)
        if isinstance(mask, str):
            problems.append(f"mask {mask_path}: {mask}")
        elif mask[0] != image[0]:
            problems.append(
                f"mask {mask_path} is {mask[0][0]}×{mask[0][1]} but its image {image_path} is "
                f"{image[0][0]}×{image[0][1]} (width×height): the mask would be stretched and no longer line up",
            )
    return problems


def _dataset_roots(datamodule: Any) -> list[Path]:  # noqa: ANN401
    """The ``root/category`` folders of an MVTec-style datamodule; none for others (``Folder``: the user's own
    ``root`` may hold anything, so it is not scanned for unused files)."""
    root = getattr(datamodule, "root", None)
    if root is None:
        return []
    root = Path(root)
    categories = getattr(datamodule, "categories", None) or [getattr(datamodule, "category", None)]
    return [root / str(c) for c in categories if c and (root / str(c)).is_dir()]


def _train_folders(datamodule: Any) -> list[Path]:  # noqa: ANN401
    """Where the training images are expected, for the empty-split message."""
    normal_dir = getattr(datamodule, "normal_dir", None)
    if normal_dir is not None:  # anomalib Folder
        dirs = normal_dir if isinstance(normal_dir, (list, tuple)) else [normal_dir]
        root = getattr(datamodule, "root", None)
        return [Path(root) / d if root is not None else Path(d) for d in dirs]
    return [folder / "train" / "good" for folder in _dataset_roots(datamodule)]


def unread_image_files(datamodule: Any, read: Iterable[str]) -> dict[Path, int]:  # noqa: ANN401
    """Image-like files under the datamodule's folders that none of its datasets reads, counted per folder."""
    # Real paths on both sides: anomalib stores absolute sample paths, while the root may be relative or a link.
    read = {os.path.realpath(p) for p in read}
    unread: dict[Path, int] = {}
    for folder in _dataset_roots(datamodule):
        for path in folder.rglob("*"):
            if path.suffix.lower() in IMAGE_SUFFIXES and os.path.realpath(path) not in read and path.is_file():
                unread[path.parent] = unread.get(path.parent, 0) + 1
    return unread


def _all_paths(datamodule: Any) -> list[str]:  # noqa: ANN401
    """Image and mask paths of every dataset the datamodule has set up (train, val, test)."""
    paths: list[str] = []
    for name in ("train_data", "val_data", "test_data"):
        samples = getattr(getattr(datamodule, name, None), "_samples", None)
        if samples is not None:
            paths += [str(p) for p in samples["image_path"]]
            if "mask_path" in samples.columns:
                paths += [str(p) for p in samples["mask_path"] if _is_set(p)]
    return paths


def _empty_train_message(datamodule: Any) -> str:  # noqa: ANN401
    name = type(datamodule).__name__
    parts = []
    for folder in _train_folders(datamodule):
        if not folder.is_dir():
            parts.append(f"{folder} (missing)")
            continue
        unread = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        note = f" ({unread} image file(s) of a type {name} does not read, e.g. .jpg: MVTecAD reads .png only)"
        parts.append(f"{folder}{note if unread else ' (empty)'}")
    where = ", ".join(parts) or "its training split"
    return f"{name} has no training images: nothing found in {where}"


def _datasets_for(datamodule: Any, stage: str) -> dict[str, Any]:  # noqa: ANN401
    # fit also checks the test split: a broken test file should not surface only after hours of training.
    names = {"fit": ("train_data", "val_data", "test_data"), "validate": ("val_data",), "test": ("test_data",)}
    names["predict"] = ("predict_data",) if getattr(datamodule, "predict_data", None) is not None else ("test_data",)
    found = {}
    for name in names.get(stage, ()):
        dataset = getattr(datamodule, name, None)
        if dataset is not None and getattr(dataset, "_samples", None) is not None:
            found[name] = dataset
    return found


def check_datamodule(datamodule: Any, stage: str) -> None:  # noqa: ANN401 (any anomalib datamodule)
    """Check the files of the datasets of ``stage`` (``fit``: train, val and test; ``test``...); raise on problems.

    Raises:
        DataCheckError: empty training split, unreadable/corrupt/high-bit-depth image, bad or misfitting mask;
            the message names every file (up to a few, then a count).
    """
    datasets = _datasets_for(datamodule, stage)
    name = type(datamodule).__name__
    train = datasets.get("train_data")
    if stage == "fit" and train is not None and len(train.samples) == 0:
        raise DataCheckError(_empty_train_message(datamodule))
    problems: list[str] = []
    for dataset in datasets.values():
        problems += sample_problems(dataset.samples)
    if problems:
        unique = list(dict.fromkeys(problems))  # val and test splits may share files
        more = f"\n  ... and {len(unique) - _MAX_LISTED} more" if len(unique) > _MAX_LISTED else ""
        listed = "\n  ".join(unique[:_MAX_LISTED])
        msg = f"{name} ({stage}): {len(unique)} bad image/mask file(s):\n  {listed}{more}"
        raise DataCheckError(msg)
    if stage == "fit":
        for folder, count in unread_image_files(datamodule, _all_paths(datamodule)).items():
            warnings.warn(
                f"{name}: {count} image file(s) in {folder} are not used (e.g. .jpg with MVTecAD, which reads .png "
                "only; or a file outside the expected layout)",
                stacklevel=2,
            )


# ------------------------------------------------------------------------------------------- 8-bit conversion
def to_8bit(source: str | Path, target: str | Path, bits: int | None = None) -> None:
    """Write the high-bit-depth grayscale image ``source`` as 8-bit grey at ``target`` (format from its suffix).

    ``[0, 2^bits − 1]`` maps linearly to ``[0, 255]``; ``bits`` is the sensor's bit depth (e.g. 12 for values up
    to 4095), ``None`` = 16 for integer images and ``[0, 1]`` for float (mode ``F``) images. The same fixed scale
    for every file keeps intensities comparable between images (per-image min–max stretching would erase the
    brightness defects that anomaly models look for).
    """
    try:
        with Image.open(source) as image:
            if image.mode not in HIGH_BIT_DEPTH_MODES:
                msg = f"{source} is not a high-bit-depth grayscale image (mode {image.mode}); nothing to convert"
                raise ValueError(msg)
            array = np.asarray(image, dtype=np.float64)
            top = 1.0 if image.mode == "F" and bits is None else float(2 ** (bits or 16) - 1)
    except (OSError, SyntaxError) as error:
        msg = f"cannot read {source}: {error}"
        raise DataCheckError(msg) from error
    scaled = np.clip(np.rint(array * 255.0 / top), 0, 255).astype(np.uint8)
    Image.fromarray(scaled, mode="L").save(target)


def folder_to_8bit(source: str | Path, target: str | Path, bits: int | None = None) -> int:
    """Copy the tree ``source`` to ``target``; high-bit-depth images are written as 8-bit (:func:`to_8bit`).

    Other files are copied unchanged. Returns the number of converted images.
    """
    source, target = Path(source), Path(target)
    converted = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        problem = describe_image(path) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if isinstance(problem, str) and ("high-bit-depth" in problem or "float grayscale" in problem):
            to_8bit(path, out, bits)  # same name and format (PNG or TIFF both hold 8-bit grey)
            converted += 1
        else:
            shutil.copy2(path, out)
    return converted


def main() -> None:
    """``check ROOT``: list problem files under a folder; ``to-8bit SRC DST [--bits N]``: convert a tree."""
    parser = argparse.ArgumentParser(prog="python -m anomalib_simplenet.data.checks", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check")
    check.add_argument("root", type=Path)
    convert = commands.add_parser("to-8bit")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path)
    convert.add_argument("--bits", type=int, default=None)
    args = parser.parse_args()
    if args.command == "to-8bit":
        count = folder_to_8bit(args.source, args.target, args.bits)
        print(f"{count} high-bit-depth image(s) converted; the tree is copied to {args.target}")  # noqa: T201
        return
    bad = [(p, d) for p in sorted(args.root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
           for d in [describe_image(p)] if isinstance(d, str)]
    for path, problem in bad:
        print(f"{path}: {problem}")  # noqa: T201
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
