"""Classification tasks learnable from normal images only.

* Several categories: the label of an image is its category, read from its path (MVTec layout
  ``root/<category>/...``).
* One category: the label is which of up to 8 geometric transforms (the dihedral group of the square:
  rotations by 0/90/180/270° with and without a horizontal flip) was applied to the image — Golan &
  El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations", NeurIPS 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# (quarter turns, horizontal flip). The first four keep the image shape, so ``num_transforms <= 4`` also
# works on non-square inputs; the last four swap height and width.
TRANSFORMS: tuple[tuple[int, bool], ...] = (
    (0, False),
    (2, False),
    (0, True),
    (2, True),
    (1, False),
    (3, False),
    (1, True),
    (3, True),
)
MAX_TRANSFORMS = len(TRANSFORMS)


def check_num_transforms(num_transforms: int) -> int:
    """Validate the number of transform classes (2…8)."""
    if not 2 <= num_transforms <= MAX_TRANSFORMS:
        msg = f"num_transforms must be in [2, {MAX_TRANSFORMS}], got {num_transforms}"
        raise ValueError(msg)
    return num_transforms


def apply_transforms(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Apply transform ``labels[i]`` to ``images[i]``: ``(N, C, H, W)`` → ``(N, C, H, W)``.

    Raises:
        ValueError: a transform that swaps height and width on non-square images.
    """
    height, width = images.shape[-2:]
    output = torch.empty_like(images)
    for label in labels.unique().tolist():
        quarter_turns, flip = TRANSFORMS[label]
        if quarter_turns % 2 and height != width:
            msg = (
                f"transform {label} rotates by 90° but the images are {height}×{width}, not square: use a square "
                "image_size or num_transforms <= 4"
            )
            raise ValueError(msg)
        index = labels == label
        selected = images[index]
        if flip:
            selected = selected.flip(-1)
        output[index] = torch.rot90(selected, quarter_turns, dims=(-2, -1))
    return output


def random_transform_labels(count: int, num_transforms: int, device: torch.device | None = None) -> torch.Tensor:
    """One uniformly drawn transform per image ``(count,)`` (training: every image sees every transform over epochs)."""
    return torch.randint(num_transforms, (count,), device=device)


def fixed_transform_labels(count: int, num_transforms: int, device: torch.device | None = None) -> torch.Tensor:
    """``0, 1, …, K-1, 0, …`` ``(count,)``: deterministic, so validation losses of different epochs compare."""
    return torch.arange(count, device=device) % num_transforms


def category_labels(
    paths: Sequence[str],
    categories: Sequence[str],
    device: torch.device | None = None,
) -> torch.Tensor:
    """Category index ``(N,)`` of each image: the nearest enclosing folder named like a category."""
    lookup = {name: index for index, name in enumerate(categories)}
    labels = []
    for path in paths:
        index = next((lookup[part] for part in reversed(Path(path).parts[:-1]) if part in lookup), None)
        if index is None:
            msg = f"image {path} is in none of the category folders {list(categories)}"
            raise ValueError(msg)
        labels.append(index)
    return torch.tensor(labels, dtype=torch.long, device=device)


def data_categories(categories: Sequence[str] | None, datamodule: Any) -> list[str]:
    """The categories to train on: ``categories`` if given, else the datamodule's ``categories`` or ``category``
    (``["default"]`` without either)."""
    if categories:
        return [str(c) for c in categories]
    found = getattr(datamodule, "categories", None)
    if found:
        return [str(c) for c in found]
    category = getattr(datamodule, "category", None)
    return [str(category) if category else "default"]
