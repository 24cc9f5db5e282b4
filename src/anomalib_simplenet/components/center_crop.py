"""Resize the shorter side, then take the centre crop: the official SimpleNet input geometry, exportable.

The official SimpleNet (and PatchCore) pipeline resizes an image's shorter side to ``resize`` (329) and keeps
the centred ``crop`` (288 × 288): object scale and aspect ratio are kept, the border is cut. Squashing the
whole image to the crop size instead changes both. Here the two steps are one pair of resampling matrices
(the rows of the antialiased resize that survive the crop, see :mod:`.resize`), built from the input's
dynamic size, so torch and an exported ONNX/OpenVINO graph compute the same pixels for images of any size.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Resize
from torchvision.transforms.v2 import functional as F

from .resize import band_weights, resample


def _round_half_even(numerator: int | torch.SymInt) -> int | torch.SymInt:
    """``round(numerator / 2)`` as Python rounds it (halves to even), in integer operations an exporter keeps."""
    half = numerator // 2
    return half + (numerator % 2) * (half % 2)


def crop_geometry(
    height: int | torch.SymInt, width: int | torch.SymInt, resize: int, crop: tuple[int, int]
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Resized ``(height, width)`` and the crop's offsets ``(top, left)`` in the resized image.

    The shorter side becomes ``resize``, the longer ``int(resize · long / short)`` and the crop is centred with
    Python's rounding, as torchvision's ``Resize(resize)`` + ``CenterCrop(crop)``. One exception keeps the
    transform idempotent: an input that already has the crop size is left as it is (``resize`` = its shorter
    side). anomalib's datamodules apply the model's ``Resize`` to dataset images and the pre-processor applies
    it again to the batch; a second resize-and-crop would zoom into the crop.
    """
    shorter = torch.sym_min(height, width)
    # 1 when the input already has the crop size, else 0; arithmetic instead of ``if``: no guard in an export.
    mismatch = torch.sym_max(height - crop[0], crop[0] - height) + torch.sym_max(width - crop[1], crop[1] - width)
    cropped = 1 - torch.sym_min(mismatch, 1)
    target = resize + cropped * (shorter - resize)
    resized = ((target * height) // shorter, (target * width) // shorter)
    offsets = (_round_half_even(resized[0] - crop[0]), _round_half_even(resized[1] - crop[1]))
    return resized, offsets


class ResizeCenterCrop(Resize):
    """Resize the shorter side to ``resize``, then centre-crop ``crop`` (an int or ``(height, width)``).

    A torchvision ``Resize`` subclass whose ``size`` is the crop size, so anomalib's datamodules find it and
    resize-and-crop variable-size dataset images (and their masks) to fixed-size tensors before collating.
    Images (floating point): antialiased bilinear as :class:`.resize.AntialiasedResize`, exportable; masks and
    other inputs: torchvision's resize (nearest for masks) and centre crop, the same geometry.
    """

    def __init__(self, crop: int | tuple[int, int] | list[int], resize: int) -> None:
        size = [crop, crop] if isinstance(crop, int) else [int(side) for side in crop]
        if len(size) != 2 or min(size) <= 0:
            msg = f"ResizeCenterCrop: crop must be a positive int or (height, width), got {crop!r}"
            raise ValueError(msg)
        if not isinstance(resize, int) or resize < max(size):
            msg = f"ResizeCenterCrop: resize (shorter side, {resize!r}) must be an int >= the crop size {size}"
            raise ValueError(msg)
        super().__init__(size=size, antialias=True)
        self.resize = resize

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Images and plain tensors (float): one matrix product per axis; anything else: torchvision's kernels."""
        height, width = inpt.shape[-2], inpt.shape[-1]
        crop = (self.size[0], self.size[1])
        resized, offsets = crop_geometry(height, width, self.resize, crop)
        plain = isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)
        if not ((plain or isinstance(inpt, tv_tensors.Image)) and inpt.is_floating_point()):
            out = self._call_kernel(F.resize, inpt, size=[int(resized[0]), int(resized[1])],
                                    interpolation=self.interpolation, antialias=True)  # fmt: skip
            return self._call_kernel(F.center_crop, out, output_size=list(crop))
        images = inpt if plain else inpt.as_subclass(torch.Tensor)  # export traces plain tensors: keep them
        dtype = torch.promote_types(images.dtype, torch.float32)
        scale = (height / resized[0], width / resized[1])
        rows = band_weights(height, crop[0], scale[0], offsets[0], dtype, images.device)  # (h, H)
        cols = band_weights(width, crop[1], scale[1], offsets[1], dtype, images.device)  # (w, W)
        out = resample(images, rows, cols)
        return out if plain else tv_tensors.wrap(out, like=inpt)

    def extra_repr(self) -> str:
        """Shorter side, crop and filter."""
        return f"resize={self.resize}, crop={self.size}, filter=antialiased bilinear (exportable)"
