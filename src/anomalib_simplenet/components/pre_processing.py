"""The plugin's pre-processors: resize to the model's input size (and ImageNet normalisation), export-safe.

Every plugin model builds its pre-processor here. The resize is :class:`AntialiasedResize`, which runs the same
antialiased filter in torch and in the exported ONNX/OpenVINO graph, so exported scores match the torch model on
images of any size (a plain ``Resize(antialias=True)`` is exported without antialiasing by anomalib). With
``resize_shorter_side`` it is :class:`ResizeCenterCrop` instead (the official SimpleNet geometry: shorter side
329, centre crop 288), equally exportable; :class:`CenterCropPreProcessor` offers it to any model.
"""

from __future__ import annotations

from typing import Any

from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.spec import transform_to_spec
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torchvision.transforms.v2 import CenterCrop, Compose, InterpolationMode, Normalize, Resize, Transform

from .center_crop import ResizeCenterCrop
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


def _shorter_side_resize(step: Transform) -> int | None:
    """The shorter-side length of a bilinear antialiased ``Resize(int)``, else ``None``."""
    if type(step) is not Resize or step.max_size is not None or step.antialias is False:
        return None
    size = step.size
    length = size if isinstance(size, int) else size[0] if len(size) == 1 else None
    return length if step.interpolation == InterpolationMode.BILINEAR else None


def _merge_resize_and_crop(steps: list[Transform]) -> list[Transform]:
    """``Resize(int)`` directly followed by ``CenterCrop`` → one :class:`ResizeCenterCrop` (specs store the pair)."""
    merged: list[Transform] = []
    for step in steps:
        resize = _shorter_side_resize(merged[-1]) if merged else None
        if type(step) is CenterCrop and resize is not None and resize >= max(step.size):
            merged[-1] = ResizeCenterCrop(list(step.size), resize)
        else:
            merged.append(step)
    return merged


def to_exportable(transform: Transform | None) -> Transform | None:
    """Replace fixed-size bilinear antialiased ``Resize`` steps (also inside ``Compose``) by ``AntialiasedResize``,
    and a shorter-side ``Resize`` followed by ``CenterCrop`` by ``ResizeCenterCrop``."""
    if type(transform) is Resize and _is_replaceable(transform):
        return AntialiasedResize(transform.size)
    if isinstance(transform, Compose):
        return Compose(_merge_resize_and_crop([to_exportable(step) for step in transform.transforms]))
    return transform


def to_torchvision(transform: Transform | None) -> Transform | None:
    """Inverse of :func:`to_exportable`: ``AntialiasedResize`` → the equal ``Resize(antialias=True)``,
    ``ResizeCenterCrop`` → ``Resize(shorter side)`` + ``CenterCrop`` (for specs)."""
    if isinstance(transform, ResizeCenterCrop):
        return Compose([Resize(transform.resize, antialias=True), CenterCrop(list(transform.size))])
    if isinstance(transform, AntialiasedResize):
        return Resize(list(transform.size), antialias=True)
    if isinstance(transform, Compose):
        steps = [to_torchvision(step) for step in transform.transforms]
        flat = [inner for step in steps for inner in (step.transforms if isinstance(step, Compose) else [step])]
        return Compose(flat)
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


def geometry(image_size: int | tuple[int, int], resize_shorter_side: int | None = None) -> Transform:
    """Squash to ``image_size``, or (``resize_shorter_side`` given) resize the shorter side and centre-crop it."""
    if resize_shorter_side is None:
        return AntialiasedResize(as_size(image_size))
    return ResizeCenterCrop(as_size(image_size), resize_shorter_side)


def imagenet_pre_processor(
    image_size: int | tuple[int, int], resize_shorter_side: int | None = None
) -> PreProcessor:
    """Resize to ``image_size`` (antialiased, exportable) and normalise with ImageNet statistics.

    ``resize_shorter_side``: resize the shorter side to it and centre-crop ``image_size`` instead (keeps the
    aspect ratio; the official SimpleNet: 329 → 288).
    """
    return ExportablePreProcessor(
        transform=Compose([
            geometry(image_size, resize_shorter_side),
            Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]),
    )


class CenterCropPreProcessor(ExportablePreProcessor):
    """Resize the shorter side to ``resize_shorter_side``, centre-crop ``image_size``, ImageNet-normalise.

    For any model's ``pre_processor`` argument, also from a config file::

        pre_processor:
          class_path: anomalib_simplenet.components.pre_processing.CenterCropPreProcessor
          init_args: {image_size: 288, resize_shorter_side: 329}
    """

    def __init__(self, image_size: int | tuple[int, int] = 288, resize_shorter_side: int = 329) -> None:
        super().__init__(transform=imagenet_pre_processor(image_size, resize_shorter_side).transform)


def resize_pre_processor(image_size: int | tuple[int, int]) -> PreProcessor:
    """Resize to ``image_size`` only: pixels stay in ``[0, 1]`` (for models trained from scratch to reproduce them)."""
    return ExportablePreProcessor(transform=Compose([AntialiasedResize(as_size(image_size))]))
