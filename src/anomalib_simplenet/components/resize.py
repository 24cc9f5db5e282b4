"""Antialiased bilinear resize written as two matrix products, so torch and ONNX/OpenVINO run the same maths.

torchvision's ``Resize(antialias=True)`` cannot be exported to ONNX, so anomalib swaps in ``antialias=False``
for export: the exported model then sees aliased images (900×900 → 256×256 keeps only 1 pixel in ~3.5) while
the torch model saw smoothed ones, and scores differ. Here the same triangle filter (torch's antialiased
bilinear: support ``max(scale, 1)`` input pixels each side, weights renormalised at the borders) is built as
an ``(out, in)`` weight matrix per axis from the input's *dynamic* size, with ops every exporter supports
(``arange``, ``abs``, ``clamp``, ``matmul``). One code path, both runtimes, any input size.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Resize


def triangle_weights(in_len: int | torch.SymInt, out_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Resampling matrix ``(out_len, in_len)`` of the antialiased bilinear filter; each row sums to 1.

    Output pixel ``i`` is centred at ``(i + 0.5) · scale`` in input coordinates (``scale = in / out``,
    ``align_corners=False``); input pixel ``j`` (centre ``j + 0.5``) gets ``max(0, 1 − |Δ| / support)`` with
    ``support = max(scale, 1)``: a box-like average when shrinking, plain bilinear when enlarging.
    """
    return band_weights(in_len, out_len, in_len / out_len, 0, dtype, device)


def band_weights(
    in_len: int | torch.SymInt,
    out_len: int,
    scale: float | torch.SymFloat,
    offset: int | torch.SymInt,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Rows ``offset … offset + out_len − 1`` of the resampling matrix that maps ``in_len`` pixels to
    ``in_len / scale`` pixels: ``(out_len, in_len)``, each row summing to 1.

    ``offset = 0`` and ``scale = in / out`` is a plain resize; a positive offset is a resize followed by a crop
    (the rows of the cropped pixels only, so the pixels cut away are never computed).
    """
    support = torch.sym_max(scale, 1.0)  # sym_max keeps both cases in one exported graph (no shape guard)
    centres = (torch.arange(out_len, dtype=dtype, device=device) + offset + 0.5) * scale
    positions = torch.arange(in_len, dtype=dtype, device=device) + 0.5
    weights = (1.0 - (positions[None, :] - centres[:, None]).abs() / support).clamp_min(0.0)
    return weights / weights.sum(dim=1, keepdim=True)


def antialiased_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize floating-point ``(..., H, W)`` images to ``(..., h, w)`` = ``size``.

    Equal to ``F.interpolate(mode="bilinear", antialias=True)`` up to float rounding (~1e-7), for shrinking and
    enlarging alike. Computed in float32 at least (float16 weights would not sum to 1 closely enough).
    """
    if not images.is_floating_point():
        msg = f"antialiased_resize: images must be floating point, got {images.dtype}"
        raise TypeError(msg)
    dtype = torch.promote_types(images.dtype, torch.float32)
    rows = triangle_weights(images.shape[-2], size[0], dtype, images.device)  # (h, H)
    cols = triangle_weights(images.shape[-1], size[1], dtype, images.device)  # (w, W)
    return resample(images, rows, cols)


def resample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ images @ colsᵀ``: floating-point ``(..., H, W)`` images to ``(..., h, w)`` with weight matrices
    ``rows (h, H)`` and ``cols (w, W)`` (of dtype float32 or wider), in the images' dtype."""
    dtype = rows.dtype
    # Weights on the right of each product, as in a linear layer: with a static export size they fold into
    # constants, and NNCF's bias correction only handles constant weights in that position.
    resized = torch.matmul(images.to(dtype), cols.transpose(0, 1))  # (..., H, w)
    resized = torch.matmul(resized.transpose(-1, -2), rows.transpose(0, 1)).transpose(-1, -2)  # (..., h, w)
    return resized.to(images.dtype)


class AntialiasedResize(Resize):
    """``Resize`` to a fixed ``(height, width)`` whose image path is exportable and antialiased in both runtimes.

    It subclasses torchvision's ``Resize`` so that anomalib's datamodules still find it (they resize variable-size
    images in the dataset with the model's ``Resize`` before collating). Masks and other non-image inputs use
    torchvision's kernels (nearest for masks), as with a plain ``Resize``.

    The ``antialias`` attribute is ignored for float images: anomalib's export sets it to ``False`` on its copy of
    the transform (``disable_antialiasing``) because torchvision's filter cannot be exported, but this filter can,
    so the exported graph keeps the antialiasing the torch model was trained with.
    """

    def __init__(self, size: tuple[int, int] | list[int]) -> None:
        if len(size) != 2:
            msg = f"AntialiasedResize: size must be (height, width), got {size!r}"
            raise ValueError(msg)
        super().__init__(size=[int(size[0]), int(size[1])], antialias=True)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Images and plain tensors (float): matrix resize; anything else: torchvision's ``Resize``."""
        # A plain tensor is an image (torchvision's rule). Not ``type(x) is Tensor``: export traces fake subclasses.
        plain = isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)
        is_image = plain or isinstance(inpt, tv_tensors.Image)
        if not (is_image and inpt.is_floating_point()):
            return super().transform(inpt, params)
        size = (self.size[0], self.size[1])
        if plain:
            return antialiased_resize(inpt, size)
        return tv_tensors.wrap(antialiased_resize(inpt.as_subclass(torch.Tensor), size), like=inpt)

    def extra_repr(self) -> str:
        """Size and filter (``antialias`` is not shown: it does not apply, see the class docstring)."""
        return f"size={self.size}, filter=antialiased bilinear (exportable)"
