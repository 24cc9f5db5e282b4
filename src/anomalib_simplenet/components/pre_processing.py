"""The plugin's default pre-processor: resize to the model's input size and ImageNet normalisation."""

from __future__ import annotations

from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``288`` or ``(288, 288)`` → ``(288, 288)``, with a clear error for anything else."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        msg = f"image_size must be a positive int or (height, width), got {image_size!r}"
        raise ValueError(msg)
    return size  # type: ignore[return-value]


def imagenet_pre_processor(image_size: int | tuple[int, int]) -> PreProcessor:
    """Resize to ``image_size`` and normalise with ImageNet statistics."""
    return PreProcessor(
        transform=Compose([
            Resize(as_size(image_size), antialias=True),
            Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]),
    )


def resize_pre_processor(image_size: int | tuple[int, int]) -> PreProcessor:
    """Resize to ``image_size`` only: pixels stay in ``[0, 1]`` (for models trained from scratch to reconstruct them)."""
    return PreProcessor(transform=Compose([Resize(as_size(image_size), antialias=True)]))
