"""Deterministic subsets of an MVTec-layout category, for benchmarks and quick runs on a slice of real data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def evenly_spaced(files: list[Path], count: int | None) -> list[Path]:
    """``count`` files spread over the sorted list (all if ``count`` is ``None`` or larger)."""
    if count is None or count >= len(files):
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no copy; anomalib drops symlinks that point outside the dataset root), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def make_subset(
    origin: Path,
    target: Path,
    train: int | None = None,
    test_good: int | None = None,
    test_defects: int | None = None,
    defects: Sequence[str] | None = None,
) -> Path:
    """Write a subset of the category ``origin`` to ``target`` (replaced if it exists); return ``target.parent``,
    the root a datamodule takes (with ``category=target.name``).

    Args:
        origin: MVTec-layout category folder (``train/good``, ``test/<type>``, ``ground_truth/<type>``).
        target: category folder to create.
        train: evenly spaced ``train/good`` images (``None``: all).
        test_good: evenly spaced ``test/good`` images (``None``: all).
        test_defects: evenly spaced images per defect type, each with its mask (``None``: all).
        defects: defect types to include (default: every ``test/`` folder but ``good``).
    """
    if not (origin / "train" / "good").is_dir() or not (origin / "test").is_dir():
        msg = f"{origin} is not an MVTec-layout category (needs train/good/ and test/)"
        raise FileNotFoundError(msg)
    types = sorted(p.name for p in (origin / "test").iterdir() if p.is_dir() and p.name != "good")
    missing = sorted(set(defects or ()) - set(types))
    if missing:
        msg = f"{origin}: no test folder for defect type(s) {missing}; found {types}"
        raise FileNotFoundError(msg)
    if target.exists():
        shutil.rmtree(target)
    plan = [(origin / "train" / "good", train), (origin / "test" / "good", test_good)]
    plan += [(origin / "test" / name, test_defects) for name in (defects or types)]
    for folder, count in plan:
        for file in evenly_spaced(sorted(folder.glob("*.png")), count):
            relative = file.relative_to(origin)
            link_or_copy(file, target / relative)
            mask = origin / "ground_truth" / folder.name / f"{file.stem}_mask.png"
            if relative.parts[0] == "test" and mask.is_file():
                link_or_copy(mask, target / mask.relative_to(origin))
    return target.parent
