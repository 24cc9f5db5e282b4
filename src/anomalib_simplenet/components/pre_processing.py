"""The plugin's pre-processors: resize to the model's input size (and ImageNet normalisation), export-safe.

Every plugin model builds its pre-processor here. The resize is :class:`AntialiasedResize`, which runs the same
antialiased filter in torch and in the exported ONNX/OpenVINO graph, so exported scores match the torch model on
images of any size (a plain ``Resize(antialias=True)`` is exported without antialiasing by anomalib).
"""

from __future__ import annotations

from typing import Any

from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.spec import transform_to_spec
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize, Transform

from .resize import AntialiasedResize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``288`` or ``(288, 288)`` → ``(288, 288)``, with a clear error for anything else."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        msg = f"image_size must be a positive int or (height, width), got {image_size!r}"
        raise ValueError(msg)
    return size  # type: ignore[return-value]


def _is_replaceable(resize: Resize) -> bool:
    """A torchvision ``Resize`` that :class:`AntialiasedResize` computes identically (fixed size, bilinear, AA)."""
    fixed_size = isinstance(resize.size, (list, tuple)) and len(resize.size) == 2 and resize.max_size is None
    bilinear = resize.interpolation == InterpolationMode.BILINEAR
    return fixed_size and bilinear and resize.antialias is not False


def to_exportable(transform: Transform | None) -> Transform | None:
    """Replace fixed-size bilinear antialiased ``Resize`` steps (also inside ``Compose``) by ``AntialiasedResize``."""
    if type(transform) is Resize and _is_replaceable(transform):
        return AntialiasedResize(transform.size)
    if isinstance(transform, Compose):
        return Compose([to_exportable(step) for step in transform.transforms])
    return transform


def to_torchvision(transform: Transform | None) -> Transform | None:
    """Inverse of :func:`to_exportable`: ``AntialiasedResize`` → the equal ``Resize(antialias=True)`` (for specs)."""
    if isinstance(transform, AntialiasedResize):
        return Resize(list(transform.size), antialias=True)
    if isinstance(transform, Compose):
        return Compose([to_torchvision(step) for step in transform.transforms])
    return transform


class ExportablePreProcessor(PreProcessor):
    """``PreProcessor`` whose resize is :class:`AntialiasedResize` in training, evaluation and export alike.

    Checkpoints store the transform as anomalib's plain-data spec with a torchvision ``Resize(antialias=True)``
    in place of ``AntialiasedResize`` (the same filter), so they load under ``weights_only=True`` and in plain
    anomalib; loading converts it back. Checkpoints written before this class (torchvision ``Resize``) load the
    same way and so gain the exportable resize too.
    """

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform=to_exportable(transform))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Transform the training batch, unless the model says it will not read its images.

        A plugin model that trains from cached features (its ``needs_train_images(batch)`` is ``False``) would
        throw the resized images away: on 2 CPU cores the antialiased resize of a cached epoch costs about a third
        of it. Other anomalib modules using this pre-processor always get their images transformed.
        """
        # Imported here: the plugin's models import this module.
        from anomalib_simplenet.models.plugin_module import PluginModuleMixin

        if isinstance(pl_module, PluginModuleMixin) and not pl_module.needs_train_images(batch):
            return
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def checkpoint_config(self) -> dict[str, Any]:
        """anomalib's spec of the transform, with ``AntialiasedResize`` written as the equivalent ``Resize``."""
        try:
            return {"transform": transform_to_spec(to_torchvision(self.transform))}
        except ValueError:  # a user transform outside anomalib's allow-list: anomalib's warning and fallback
            return super().checkpoint_config()

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the spec, then use ``AntialiasedResize`` for its resize (torch and export)."""
        super().load_checkpoint_config(config)
        self.transform = to_exportable(self.transform)
        self.export_transform = get_exportable_transform(self.transform)


def imagenet_pre_processor(image_size: int | tuple[int, int]) -> PreProcessor:
    """Resize to ``image_size`` (antialiased, exportable) and normalise with ImageNet statistics."""
    return ExportablePreProcessor(
        transform=Compose([
            AntialiasedResize(as_size(image_size)),
            Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]),
    )


def resize_pre_processor(image_size: int | tuple[int, int]) -> PreProcessor:
    """Resize to ``image_size`` only: pixels stay in ``[0, 1]`` (for models trained from scratch to reproduce them)."""
    return ExportablePreProcessor(transform=Compose([AntialiasedResize(as_size(image_size))]))
