"""What a feature cache needs from the training data: that it is deterministic, its size, and reading it cheaply.

Features may be cached only when a training image maps to the same input every epoch (anomalib 2.x: the train
dataset's ``augmentations``, which the datamodule sets from ``train_augmentations``/``augmentations`` plus the
model's resize, and the model pre-processor's transform).

Training epochs served from the cache do not need their images. Once the frozen features of every training
image are cached, a training step needs an image's path (the cache key), its label and the batch size, never its
pixels. anomalib's dataset still decodes (and, for images of mixed sizes, resizes) every image in the loader's
workers; on a small CPU that work competes with the training step for the same cores: with SimpleNet on
magnetic_tile (2 cores) it cost about as much as training the head. :func:`read_only_uncached_images` lets the
loader fetch items of cached images without opening their files, until it is undone. Validation images, whose
features are cached for a fit as well, are read the same way; their masks are still read (the post-processor's
pixel threshold needs them), but an anomalous image's pixels are not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from anomalib import TaskType
from anomalib.data import ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, read_mask
from PIL import Image as PILImage
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


STAGES = {"train": "training", "val": "validation"}


def check_stage(stage: str) -> str:
    """``stage`` if it is one of :data:`STAGES`, else a ``ValueError`` naming it."""
    if stage not in STAGES:
        msg = f"feature cache stage must be one of {list(STAGES)}, got {stage!r}"
        raise ValueError(msg)
    return stage


def stage_loader(trainer: Any, stage: str) -> Any:
    """The trainer's ``"train"`` loader or its one ``"val"`` loader (``None`` when absent, not set up yet, or
    several validation loaders)."""
    if stage == "train":
        return getattr(trainer, "train_dataloader", None)
    loaders = getattr(trainer, "val_dataloaders", None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if len(loaders) == 1 else None
    return loaders


def uncacheable_reason(trainer: Any, pre_processor: Any = None, stage: str = "train") -> str | None:
    """Why the ``stage`` (``"train"`` or ``"val"``) features cannot be cached for ``trainer``'s fit, or ``None``.

    Looks at the stage's dataset ``augmentations`` (anomalib datasets), the datamodule's
    ``train_augmentations``/``val_augmentations`` and the pre-processor's ``transform``; data whose augmentation
    cannot be inspected is treated as augmented.
    """
    check_stage(stage)
    datamodule = getattr(trainer, "datamodule", None)
    dataset = getattr(datamodule, f"{stage}_data", None)
    if dataset is None:
        dataset = getattr(stage_loader(trainer, stage), "dataset", None)
    if dataset is None or not hasattr(dataset, "augmentations"):
        return f"cannot tell whether the {STAGES[stage]} data is augmented (not an anomalib dataset)"
    steps = random_steps(dataset.augmentations) + random_steps(getattr(datamodule, f"{stage}_augmentations", None))
    if steps:
        return f"{STAGES[stage]} augmentations are on ({', '.join(sorted(set(steps)))})"
    steps = random_steps(getattr(pre_processor, "transform", None))
    if steps:
        return f"the pre-processor transform may be random ({', '.join(sorted(set(steps)))})"
    return None


def set_size(trainer: Any, stage: str = "train") -> int | None:
    """Number of ``stage`` images this process sees (see :func:`loader_size`)."""
    return loader_size(stage_loader(trainer, stage))


def loader_size(loader: Any) -> int | None:
    """Number of images ``loader`` serves this process: its shard under DDP, else the whole dataset (``None``:
    unknown, e.g. validation loaders not set up yet)."""
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

    An item whose image path is in ``cached`` gets a 3×1×1 stand-in image; its path, label and mask path are the
    dataset's. Any other item is read as usual.

    Args:
        dataset: an anomalib image dataset that reads items with :class:`AnomalibDataset`'s own ``__getitem__``.
        cached: image paths whose features are cached.
        keep_masks: ``False`` (training): normal images only, with an empty 1×1 stand-in mask for a segmentation
            task. ``True`` (validation): normal and anomalous images get the mask the dataset would give them
            (read from its file, or empty at the image's size, taken from the file's header without decoding),
            through the dataset's augmentations beside the stand-in image. Resizes act on each input by its own
            size, so the pre-processor then brings that mask to the model's size exactly as with the real image.
    """

    def __init__(self, dataset: AnomalibDataset, cached: Collection[str], keep_masks: bool = False) -> None:
        self.dataset = dataset
        self.cached = frozenset(cached)
        self.keep_masks = keep_masks

    def __call__(self, indices: list[int]) -> list[ImageItem]:
        return [self._item(index) for index in indices]

    def _item(self, index: int) -> ImageItem:
        sample = self.dataset.samples.iloc[index]
        labels = (LabelName.NORMAL, LabelName.ABNORMAL) if self.keep_masks else (LabelName.NORMAL,)
        if sample.image_path not in self.cached or sample.label_index not in labels:
            return self.dataset[index]
        image, mask = Image(torch.zeros(3, 1, 1)), None
        if self.dataset.task == TaskType.SEGMENTATION:
            mask = self._mask(sample) if self.keep_masks else Mask(torch.zeros(1, 1, dtype=torch.uint8))
        if self.keep_masks and self.dataset.augmentations:
            if mask is None:
                image = self.dataset.augmentations(image)
            else:
                image, mask = self.dataset.augmentations(image, mask)
        return ImageItem(
            image=image,
            gt_mask=mask,
            gt_label=torch.tensor(sample.label_index),
            image_path=sample.image_path,
            mask_path=sample.mask_path,
        )

    @staticmethod
    def _mask(sample: Any) -> Mask:
        """The dataset's mask for ``sample``: its file for an anomalous image, else zeros of the image's size."""
        if sample.label_index == LabelName.ABNORMAL:
            return read_mask(sample.mask_path, as_tensor=True)
        with PILImage.open(sample.image_path) as file:  # the header only: no pixels are decoded
            width, height = file.size
        return Mask(torch.zeros(height, width, dtype=torch.uint8))


def read_only_uncached_images(
    loader: Any, cached: Collection[str], keep_masks: bool = False
) -> Callable[[], None] | None:
    """Make ``loader`` skip the image files of ``cached`` paths; returns the function that undoes it.

    ``None`` (nothing changed) unless ``loader`` is a DataLoader over a plain anomalib image dataset: a dataset
    that reads its items its own way (depth, video, a user's subclass) is left alone. A loader with persistent
    workers keeps the copies they already hold and reads as before. ``keep_masks``: see :class:`ImagelessItems`.
    """
    dataset = getattr(loader, "dataset", None)
    plain = isinstance(dataset, AnomalibDataset) and type(dataset).__getitem__ is AnomalibDataset.__getitem__
    if not plain or hasattr(type(dataset), "__getitems__") or "__getitems__" in vars(dataset):
        return None
    # An instance attribute: torch's fetcher asks the dataset object, not its class, for __getitems__.
    dataset.__getitems__ = ImagelessItems(dataset, cached, keep_masks)

    def undo() -> None:
        vars(dataset).pop("__getitems__", None)

    return undo


def fetch_in_process(loader: Any) -> Callable[[], None] | None:
    """Make ``loader`` fetch its batches in this process instead of worker processes; returns the undo.

    Workers pay off while they decode images beside the training step. Once a loader serves only cached images'
    stand-ins (and, in validation, masks), the fork and start of its workers every epoch cost more than the items
    themselves: toothbrush, 10 epochs on 2 CPU cores, about a seventh of SimpleNet's fit. ``None`` (nothing
    changed) for a loader without workers or with persistent ones (started once already).
    """
    workers = getattr(loader, "num_workers", 0)
    if not workers or getattr(loader, "persistent_workers", False):
        return None
    loader.num_workers = 0  # torch reads it at each new iterator, i.e. from the next epoch on

    def undo() -> None:
        loader.num_workers = workers

    return undo
