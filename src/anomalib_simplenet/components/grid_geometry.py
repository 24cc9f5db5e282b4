"""Where the cells of a CNN feature map sit in the input image, and resampling on those true positions.

A cell ``i`` of a stride-``s`` map is usually upsampled (bilinear, ``align_corners=False``) as if it were centred
on input pixel ``s·i + (s − 1)/2``. What the cell responds to is centred elsewhere: zero-padded stride-2
convolutions put it at ``s·i`` (``(s − 1)/2`` pixels up-left), "valid" convolutions and TF-style "same" padding
further down-right, and trained weights move it again (ImageNet EfficientNet-Lite0's stride-16 cells respond to
pixels about 13 px up-left of the assumed centre). Every upsampled anomaly map then sits down-right of the
defect it found.

The geometry is therefore *measured* from the network itself, without data: a small Gaussian blob (a defect)
on a flat image at the normalised mean colour (neutral) changes the features of the cells around it most where a
cell looks, so the response-weighted mean over the cells, mapped back through ``offset + stride · index``, must
land on the blob. One rule covers zero, "valid" and "same" padding, any branch layout and what training did to
the weights, where an analytic walk over the modules needs a case per layer type and still misses the trained
weights. Dark and bright blobs at eight sub-cell phases near the probe's centre average out sampling and
polarity; interior cells are translates of each other, so central ones give the interior geometry. A probe
of input gradients instead (the effective receptive field on noise) gave the same offsets within about 1 px
but needs a backward pass and random inputs.

Positions are ``offset + stride · index`` in pixel-centre coordinates (pixel ``p`` is centred on ``p``), per axis,
stored as ``(L, 2, 2)`` tensors ``[layer, (offset, stride), (y, x)]``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

PROBE_SIZE = 224  # first probe side: lite0's stride-16 response to a central blob fits with a margin
# The response-weighted mean is pulled towards the centre when the grid cuts the response off, so the probe grows
# until the outer two rings of cells of every layer hold at most this share of it. Inception-v3's stride-16 cells
# hold 27 % there at 224 px, which moved their measured offset 5 px; lite0's 2.6 % moves it 0.1 px.
BORDER_SHARE = 0.05
BORDER_CELLS = 2
PROBE_GROWTH = 64  # px per step
MAX_PROBE_SIZE = 1024
PROBE_PHASES = [(2 * k, (2 * k + 6) % 16) for k in range(8)]  # blob positions (y, x) past the centre pixel
BLOB_SIGMA = 4.0  # px: a small defect
BLOB_AMPLITUDE = 2.0  # normalised units: a clearly visible dark or bright spot


def naive_geometry(strides: Sequence[float]) -> torch.Tensor:
    """``(L, 2, 2)`` geometry that ``F.interpolate(align_corners=False)`` assumes: offset ``(s − 1)/2``."""
    rows = [[[(s - 1) / 2, (s - 1) / 2], [float(s), float(s)]] for s in strides]
    return torch.tensor(rows, dtype=torch.float32)


def blob_probes(size: int, channels: int, sigma: float = BLOB_SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe images ``(K, C, P, P)``: one Gaussian blob each on a flat image, and the blob centres ``(K, 2)``.

    Dark and bright blobs (normalised units ±2) at ``PROBE_PHASES`` sub-cell positions near the image centre, so
    that the sampling phase of any stride up to 16 averages out.
    """
    centre = size // 2
    coordinates = torch.arange(size, dtype=torch.float64)
    images, centres = [], []
    for amplitude in (-BLOB_AMPLITUDE, BLOB_AMPLITUDE):
        for phase_y, phase_x in PROBE_PHASES:
            y, x = centre + phase_y, centre + phase_x
            blob = torch.exp(-((coordinates[:, None] - y) ** 2 + (coordinates[None, :] - x) ** 2) / (2 * sigma**2))
            images.append((amplitude * blob).float().expand(channels, -1, -1))
            centres.append((y, x))
    return torch.stack(images), torch.tensor(centres, dtype=torch.float64)


def border_share(response: torch.Tensor, cells: int = BORDER_CELLS) -> float:
    """Share of ``response`` ``(K, h, w)`` (non-negative) in the outer ``cells`` rings of the grid."""
    total = float(response.sum())
    inner = float(response[:, cells:-cells, cells:-cells].sum()) if min(response.shape[-2:]) > 2 * cells else 0.0
    return 1.0 - inner / total if total > 0 else 0.0


@torch.no_grad()
def _probe(
    features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    strides: Sequence[float],
    probe_size: int,
    in_channels: int,
    device: torch.device | str,
) -> tuple[torch.Tensor, float]:
    """Geometry ``(L, 2, 2)`` measured with probes of side ``probe_size``, and the largest border share of a layer's
    response (see :func:`measure_geometry`)."""
    blobs, centres = blob_probes(probe_size, in_channels)
    flat = torch.zeros(1, in_channels, probe_size, probe_size)
    maps = list(features(torch.cat([flat, blobs]).to(device)))
    if len(maps) != len(strides):
        msg = f"measure_geometry: {len(maps)} feature maps but {len(strides)} strides"
        raise ValueError(msg)
    rows, share = [], 0.0
    for index, (feature_map, stride) in enumerate(zip(maps, strides, strict=True)):
        response = (feature_map[1:] - feature_map[:1]).double().square().sum(dim=1).cpu()  # (K, h, w)
        mass = response.sum(dim=(1, 2))
        responding = mass > 0  # a rectifier may ignore one polarity
        if not torch.isfinite(response).all() or not responding.any():
            msg = f"measure_geometry: feature layer {index} does not respond to the probe blobs"
            raise ValueError(msg)
        response, mass, blob_centres = response[responding], mass[responding], centres[responding]
        share = max(share, border_share(response))
        height, width = response.shape[-2:]
        mean_y = (response.sum(dim=2) * torch.arange(height, dtype=torch.float64)).sum(dim=1) / mass
        mean_x = (response.sum(dim=1) * torch.arange(width, dtype=torch.float64)).sum(dim=1) / mass
        offset_y = (blob_centres[:, 0] - stride * mean_y).mean().item()
        offset_x = (blob_centres[:, 1] - stride * mean_x).mean().item()
        rows.append([[offset_y, offset_x], [float(stride), float(stride)]])
    return torch.tensor(rows, dtype=torch.float32), share


def measure_geometry(
    features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    strides: Sequence[float],
    probe_size: int = PROBE_SIZE,
    in_channels: int = 3,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Measure each feature layer's cell positions from its response to blobs on a flat (neutral) image.

    Args:
        features: maps images ``(K, C_in, P, P)`` to the feature maps ``[(K, C_l, h_l, w_l)]`` (eval mode).
        strides: each layer's stride in input pixels (timm's ``feature_info.reduction()``).
        probe_size: side ``P`` of the first probe images; grown by ``PROBE_GROWTH`` while a layer's response is cut
            off by its grid (more than ``BORDER_SHARE`` of it in the outer ``BORDER_CELLS`` rings of cells), up to
            ``MAX_PROBE_SIZE`` (with a warning if it still is).
        in_channels: image channels.
        device: where the probe runs.

    Returns:
        ``(L, 2, 2)`` float32 tensor ``[layer, (offset, stride), (y, x)]``; deterministic for given weights.

    A cell responds most to a blob at its own position, so the response-weighted mean cell index
    ``ĵ = Σ_j R_j · j / Σ_j R_j`` (``R_j``: squared feature change of cell ``j``) satisfies
    ``blob = offset + stride · ĵ``; averaged over blob phases and polarities. That holds only while the grid holds
    the whole response: a broad response cut off at the border pulls ``ĵ`` towards the centre.
    """
    size = probe_size
    geometry, share = _probe(features, strides, size, in_channels, device)
    while share > BORDER_SHARE and size + PROBE_GROWTH <= MAX_PROBE_SIZE:
        size += PROBE_GROWTH
        geometry, share = _probe(features, strides, size, in_channels, device)
    if share > BORDER_SHARE:
        warnings.warn(f"measure_geometry: {100 * share:.0f}% of a layer's response to a blob lies on the border of a "
                      f"{size}-px probe: the cell positions are biased towards the centre", stacklevel=2)
    return geometry


# Measured geometries of this process, per network (class and exact weights), strides and probe size.
_GEOMETRY_CACHE: dict[tuple, torch.Tensor] = {}
_GEOMETRY_CACHE_SIZE = 16


def weights_fingerprint(module: nn.Module) -> str:
    """Digest of ``module``'s class and state (names, shapes, dtypes and values of parameters and buffers).

    Two networks with the same fingerprint compute the same function, so they share a measured geometry;
    hashing wide_resnet50_2's weights takes a fraction of a second, measuring them half a minute on one core.
    """
    digest = hashlib.blake2b(type(module).__qualname__.encode(), digest_size=20)
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def measure_module_geometry(module: nn.Module, strides: Sequence[float], probe_size: int = PROBE_SIZE) -> torch.Tensor:
    """:func:`measure_geometry` of a feature network, run in eval mode on its own device (mode restored).

    Measured once per process for each network (its class and weights), strides and probe size: building the
    same backbone again (another model, another run of a sweep) reuses the measurement.
    """
    key = (weights_fingerprint(module), tuple(float(s) for s in strides), probe_size)
    if key in _GEOMETRY_CACHE:
        return _GEOMETRY_CACHE[key].clone()
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        geometry = measure_geometry(module, strides, probe_size, device=device)
    finally:
        module.train(was_training)
    if len(_GEOMETRY_CACHE) >= _GEOMETRY_CACHE_SIZE:
        _GEOMETRY_CACHE.pop(next(iter(_GEOMETRY_CACHE)))
    _GEOMETRY_CACHE[key] = geometry.clone()
    return geometry


def interpolation_weights(
    source_len: int | torch.SymInt,
    target_len: int | torch.SymInt,
    source: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Linear-interpolation matrix ``(target_len, source_len)`` between two grids on one axis; rows sum to 1.

    Args:
        source_len: cells of the sampled grid.
        target_len: cells of the output grid.
        source: ``(offset, stride)`` of the sampled grid in input pixels (a 2-element tensor).
        target: ``(offset, stride)`` of the output grid (``(0, 1)`` for image pixels).
        dtype: dtype of the matrix.

    Output cell ``i`` (at ``target_offset + target_stride · i``) reads the source at the continuous index
    ``(position − source_offset) / source_stride``, clamped to the grid (edge values extend outwards, as in
    ``F.interpolate``). Built with ``arange``/``clamp``/``abs`` from the lengths, so it traces to ONNX.
    """
    source, target = source.to(dtype), target.to(dtype)
    positions = target[0] + target[1] * torch.arange(target_len, dtype=dtype, device=source.device)
    index = ((positions - source[0]) / source[1]).clamp(0, source_len - 1)
    cells = torch.arange(source_len, dtype=dtype, device=source.device)
    return (1.0 - (index[:, None] - cells[None, :]).abs()).clamp_min(0.0)


PIXEL_GRID = ((0.0, 0.0), (1.0, 1.0))  # the input pixels themselves: offset 0, stride 1


_WEIGHTS_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_WEIGHTS_CACHE_SIZE = 32


def tracing() -> bool:
    """True while torch.export / ONNX / TorchScript traces the model (no Python-side caching then)."""
    compiler = getattr(torch, "compiler", None)
    exporting = compiler is not None and getattr(compiler, "is_exporting", lambda: False)()
    return exporting or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _weights(
    source_size: tuple, size: tuple, source: torch.Tensor, target: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column interpolation matrices; outside tracing they are kept per sizes and geometry (at batch 1
    building them costs more than using them)."""
    key = None
    if not tracing():
        key = (source_size, size, tuple(source.flatten().tolist()), tuple(target.flatten().tolist()), dtype,
               source.device)  # fmt: skip
        if key in _WEIGHTS_CACHE:
            return _WEIGHTS_CACHE[key]
    if key is None:
        rows = interpolation_weights(source_size[0], size[0], source[:, 0], target[:, 0], dtype)
        cols = interpolation_weights(source_size[1], size[1], source[:, 1], target[:, 1], dtype)
        return rows, cols
    # Plain constants (not inference tensors), usable whatever mode the next call runs in.
    with torch.inference_mode(False), torch.no_grad():
        rows = interpolation_weights(source_size[0], size[0], source[:, 0].clone(), target[:, 0].clone(), dtype)
        cols = interpolation_weights(source_size[1], size[1], source[:, 1].clone(), target[:, 1].clone(), dtype)
        if len(_WEIGHTS_CACHE) >= _WEIGHTS_CACHE_SIZE:
            _WEIGHTS_CACHE.pop(next(iter(_WEIGHTS_CACHE)))
        _WEIGHTS_CACHE[key] = (rows, cols)
    return rows, cols


def resample(
    maps: torch.Tensor,
    size: tuple[int, int] | torch.Size,
    source: torch.Tensor,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample ``(N, C, h, w)`` maps on grid ``source`` to ``(N, C, H, W)`` = ``size`` on grid ``target``.

    Args:
        maps: feature or score maps.
        size: output ``(H, W)``.
        source: ``(2, 2)`` geometry ``[(offset, stride), (y, x)]`` of ``maps``' cells in input pixels.
        target: geometry of the output cells; ``None``: the input pixels (:data:`PIXEL_GRID`).

    Two matrix products with the map as the left operand, so that an exported graph keeps it a data input.
    """
    if target is None:
        target = torch.tensor(PIXEL_GRID, device=source.device)
    dtype = torch.promote_types(maps.dtype, torch.float32)
    rows, cols = _weights(tuple(maps.shape[-2:]), tuple(size), source, target, dtype)  # (H, h), (W, w)
    resampled = torch.matmul(maps.to(dtype), cols.transpose(0, 1))  # (N, C, h, W)
    resampled = torch.matmul(resampled.transpose(-1, -2), rows.transpose(0, 1)).transpose(-1, -2)
    return resampled.to(maps.dtype)


def register_geometry(module: nn.Module, geometry: torch.Tensor, name: str = "grid_geometry") -> None:
    """Store ``geometry`` as a checkpointed buffer of ``module``; a checkpoint saved before it existed keeps it.

    The measured geometry is a function of the frozen weights, so the value computed at construction is the one
    such a checkpoint would have carried.
    """
    module.register_buffer(name, geometry)
    # A partial of a module-level function, not a closure: whole-model exports pickle the module with its hooks.
    module.register_load_state_dict_pre_hook(partial(_keep_missing_buffer, name))


def _keep_missing_buffer(name: str, module: nn.Module, state_dict: dict, prefix: str, *_args: object) -> None:
    """Load-state-dict pre-hook: a state dict without buffer ``name`` keeps the module's current value."""
    state_dict.setdefault(prefix + name, getattr(module, name))
