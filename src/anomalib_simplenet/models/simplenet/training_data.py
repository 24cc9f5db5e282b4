"""What a feature cache needs from the training data: that it is deterministic, its size, and reading it cheaply.

Features may be cached only when a training image maps to the same input every epoch (anomalib 2.x: the train
dataset's ``augmentations``, which the datamodule sets from ``train_augmentations``/``augmentations`` plus the
model's resize, and the model pre-processor's transform).

Training epochs served from the cache do not need their images. Once the frozen features of every training
image are cached, a training step needs an image's path (the cache key), its label and the batch size, never its
pixels. anomalib's dataset still decodes (and, for images of mixed sizes, resizes) every image in the loader's
workers; on a small CPU that work competes with the training step for the same cores: with SimpleNet on
magnetic_tile (2 cores) it cost about as much as training the head. :func:`read_only_uncached_images` lets the
loader fetch items of cached images without opening their files, until it is undone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from anomalib import TaskType
from anomalib.data import ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2
from torchvision.tv_tensors import Image, Mask

# Transforms that give the same output for the same input every time (torchvision v2). Anything else,
# including Lambda and unknown classes, counts as random: a wrong "deterministic" would silently train on
# stale features, a wrong "random" only costs speed.
DETERMINISTIC_TRANSFORMS: tuple[type, ...] = (
    v2.Resize,  # also anomalib_simplenet's AntialiasedResize (a subclass)
    v2.Normalize,
    v2.CenterCrop,
    v2.Pad,
    v2.Grayscale,
    v2.RGB,
    v2.ToDtype,
    v2.ToImage,
    v2.ToPureTensor,
    v2.Identity,
)


def random_steps(transform: Any) -> list[str]:
    """Names of the steps of ``transform`` that are not known to be deterministic (``[]`` for ``None``)."""
    if transform is None:
        return []
    if isinstance(transform, v2.Compose):
        return [name for step in transform.transforms for name in random_steps(step)]
    if isinstance(transform, DETERMINISTIC_TRANSFORMS):
        return []
    return [type(transform).__name__]


def uncacheable_reason(trainer: Any, pre_processor: Any = None) -> str | None:
    """Why the training features cannot be cached for ``trainer``'s fit, or ``None`` when they can.

    Looks at the train dataset's ``augmentations`` (anomalib datasets), the datamodule's
    ``train_augmentations`` and the pre-processor's ``transform``; data whose augmentation cannot be
    inspected is treated as augmented.
    """
    datamodule = getattr(trainer, "datamodule", None)
    dataset = getattr(datamodule, "train_data", None)
    if dataset is None:
        dataset = getattr(getattr(trainer, "train_dataloader", None), "dataset", None)
    if dataset is None or not hasattr(dataset, "augmentations"):
        return "cannot tell whether the training data is augmented (not an anomalib dataset)"
    steps = random_steps(dataset.augmentations) + random_steps(getattr(datamodule, "train_augmentations", None))
    if steps:
        return f"training augmentations are on ({', '.join(sorted(set(steps)))})"
    steps = random_steps(getattr(pre_processor, "transform", None))
    if steps:
        return f"the pre-processor transform may be random ({', '.join(sorted(set(steps)))})"
    return None


def train_set_size(trainer: Any) -> int | None:
    """Number of training images this process sees: its shard under DDP, else the whole dataset."""
    loader = getattr(trainer, "train_dataloader", None)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        return len(sampler)
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


class ImagelessItems:
    """A dataset's ``__getitems__`` (torch's batched fetch) that skips the files of cached images.

    An item whose image path is in ``cached`` gets a 3×1×1 stand-in image (and an empty stand-in mask for a
    segmentation task); its path, label and mask path are the dataset's. Any other item is read as usual.

    Args:
        dataset: an anomalib image dataset that reads items with :class:`AnomalibDataset`'s own ``__getitem__``.
        cached: image paths whose features are cached.
    """

    def __init__(self, dataset: AnomalibDataset, cached: Collection[str]) -> None:
        self.dataset = dataset
        self.cached = frozenset(cached)

    def __call__(self, indices: list[int]) -> list[ImageItem]:
        return [self._item(index) for index in indices]

    def _item(self, index: int) -> ImageItem:
        sample = self.dataset.samples.iloc[index]
        if sample.image_path not in self.cached or sample.label_index != LabelName.NORMAL:
            return self.dataset[index]
        mask = Mask(torch.zeros(1, 1, dtype=torch.uint8)) if self.dataset.task == TaskType.SEGMENTATION else None
        return ImageItem(
            image=Image(torch.zeros(3, 1, 1)),
            gt_mask=mask,
            gt_label=torch.tensor(sample.label_index),
            image_path=sample.image_path,
            mask_path=sample.mask_path,
        )


def read_only_uncached_images(loader: Any, cached: Collection[str]) -> Callable[[], None] | None:
    """Make ``loader`` skip the image files of ``cached`` paths; returns the function that undoes it.

    ``None`` (nothing changed) unless ``loader`` is a DataLoader over a plain anomalib image dataset: a dataset
    that reads its items its own way (depth, video, a user's subclass) is left alone. A loader with persistent
    workers keeps the copies they already hold and reads as before.
    """
    dataset = getattr(loader, "dataset", None)
    plain = isinstance(dataset, AnomalibDataset) and type(dataset).__getitem__ is AnomalibDataset.__getitem__
    if not plain or hasattr(type(dataset), "__getitems__") or "__getitems__" in vars(dataset):
        return None
    # An instance attribute: torch's fetcher asks the dataset object, not its class, for __getitems__.
    dataset.__getitems__ = ImagelessItems(dataset, cached)

    def undo() -> None:
        vars(dataset).pop("__getitems__", None)

    return undo
