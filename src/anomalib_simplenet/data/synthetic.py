"""Small synthetic anomaly-detection datasets in the MVTec AD folder layout, deterministic by seed.

Normal images are a woven texture (two sinusoidal gratings with a random phase and a little noise);
defects are drawn on top of it (``blob``: an elliptical patch where the weave is replaced by coarse grain, as
a stain or contamination; ``scratch``: a thin dark or bright line) and each defect image has a binary mask.
The result loads with anomalib's ``MVTecAD(root, category)``::

    root/category/train/good/000.png
    root/category/test/{good,blob,scratch}/000.png
    root/category/ground_truth/{blob,scratch}/000_mask.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFECT_TYPES = ("blob", "scratch")
# Warm tint shared by the weave and the stain grain, so a stain differs in structure, not in colour cast.
_TINT = np.array([1.0, 0.9, 0.75], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Sizes are in pixels; counts are images."""

    category: str = "synthetic"
    image_size: int = 128
    n_train: int = 24
    n_test_good: int = 8
    n_test_defect: int = 8  # per defect type
    seed: int = 0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 woven texture with a random phase."""
    coords = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    period = size / 8.0
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
    pattern = np.sin(2 * np.pi * xx / period + phase_x) * np.sin(2 * np.pi * yy / period + phase_y)
    gray = 0.5 + 0.2 * pattern + rng.normal(0.0, 0.02, size=(size, size))
    return (np.clip(gray[..., None] * _TINT, 0, 1) * 255).astype(np.uint8)


def _draw_defect(rng: np.random.Generator, image: Image.Image, kind: str) -> Image.Image:
    """Draw a ``kind`` defect onto ``image`` in place; return its binary mask (mode ``L``, 0/255)."""
    size = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if kind == "blob":
        radius = rng.uniform(0.1, 0.18) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        mask_draw.ellipse([cx - radius, cy - radius * 0.7, cx + radius, cy + radius * 0.7], fill=255)
        grain = rng.uniform(0.15, 0.85, size=(size // 4 + 1, size // 4 + 1))
        grain = np.kron(grain, np.ones((4, 4)))[:size, :size, None] * _TINT
        image.paste(Image.fromarray((grain * 255).astype(np.uint8)), (0, 0), mask)
    elif kind == "scratch":
        x0, y0, x1, y1 = rng.uniform(0.1 * size, 0.9 * size, size=4)
        width = max(2, int(size / 40))
        colour = (255, 255, 255) if rng.random() < 0.5 else (20, 20, 20)
        draw.line([x0, y0, x1, y1], fill=colour, width=width)
        mask_draw.line([x0, y0, x1, y1], fill=255, width=width)
    else:
        msg = f"unknown defect type {kind!r}; choose from {DEFECT_TYPES}"
        raise ValueError(msg)
    return mask


def make_synthetic_mvtec(root: str | Path, spec: SyntheticSpec | None = None, **overrides: object) -> Path:
    """Write a synthetic MVTec-layout category under ``root`` and return the category folder.

    Args:
        root: dataset root (the ``root`` argument of anomalib's ``MVTecAD``).
        spec: what to generate; keyword ``overrides`` replace its fields.

    Existing files are overwritten, so the same seed always gives the same folder.
    """
    spec = SyntheticSpec(**{**(spec.__dict__ if spec else {}), **overrides})
    if spec.image_size < 16:
        msg = f"image_size must be >= 16, got {spec.image_size}"
        raise ValueError(msg)
    rng = np.random.default_rng(spec.seed)
    category = Path(root) / spec.category
    splits = [("train/good", spec.n_train, None), ("test/good", spec.n_test_good, None)]
    splits += [(f"test/{kind}", spec.n_test_defect, kind) for kind in DEFECT_TYPES]
    for folder, count, kind in splits:
        (category / folder).mkdir(parents=True, exist_ok=True)
        if kind:
            (category / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = Image.fromarray(_texture(rng, spec.image_size))
            if kind:
                mask = _draw_defect(rng, image, kind)
                mask.save(category / "ground_truth" / kind / f"{index:03d}_mask.png")
            image.save(category / folder / f"{index:03d}.png")
    return category


def main() -> None:
    """Command line: ``python -m anomalib_simplenet.data.synthetic ROOT [--size 128] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--category", default="synthetic")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test-good", type=int, default=8)
    parser.add_argument("--test-defect", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = SyntheticSpec(args.category, args.size, args.train, args.test_good, args.test_defect, args.seed)
    print(make_synthetic_mvtec(args.root, spec))


if __name__ == "__main__":
    main()
