"""Disks on a smooth random texture: defects whose position is known exactly, for map-position tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def texture(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, 3, size, size)`` images in [0, 1]: Gaussian-smoothed colour noise around mid-grey."""
    noise = torch.randn(count, 3, size // 4, size // 4, generator=generator)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    return (0.5 + 0.08 * smooth).clamp(0, 1)


def disk_positions(size: int, radius: int) -> list[tuple[int, int]]:
    """Disk centres ``(y, x)`` on a 4×4 lattice from ``radius + 2`` px off the borders to the middle."""
    lattice = torch.linspace(radius + 2, size - radius - 3, 4).round().int().tolist()
    return [(y, x) for y in lattice for x in lattice]


def disk_images(
    size: int, positions: list[tuple[int, int]], radius: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured images with one dark disk each at ``positions`` and their masks ``(N, 1, size, size)``."""
    generator = torch.Generator().manual_seed(seed)
    images = texture(len(positions), size, generator)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.stack([((ys - y) ** 2 + (xs - x) ** 2 <= radius**2) for y, x in positions])[:, None].float()
    images = images * (1 - masks) + 0.15 * masks
    return images, masks


def normalise(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation, as the models' pre-processors apply it."""
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def write_disk_dataset(root: Path, size: int, n_train: int = 16, seed: int = 0) -> Path:
    """MVTec-layout category ``disks`` under ``root``: textures in ``train/good``, one disk per ``test/disk`` image
    (all :func:`disk_positions`, radius ``size // 12``) with masks, and 4 ``test/good`` textures."""
    category = root / "disks"
    generator = torch.Generator().manual_seed(seed)
    radius = size // 12
    defective, masks = disk_images(size, disk_positions(size, radius), radius, seed=seed + 1)
    folders = {"train/good": texture(n_train, size, generator), "test/good": texture(4, size, generator),
               "test/disk": defective, "ground_truth/disk": masks}  # fmt: skip
    for folder, tensors in folders.items():
        (category / folder).mkdir(parents=True, exist_ok=True)
        suffix = "_mask" if folder.startswith("ground_truth") else ""
        for index, tensor in enumerate(tensors):
            array = (tensor.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(array).save(category / folder / f"{index:03d}{suffix}.png")
    return category
