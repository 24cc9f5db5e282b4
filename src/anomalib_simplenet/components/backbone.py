"""Frozen, truncated timm backbones with offline-safe weight loading.

One place for every plugin model that reads pretrained CNN features:

* the network stops at the deepest requested layer (timm ``features_only`` drops everything after it);
* ``pre_trained=True`` without network fails within seconds with a message that says what to do,
  instead of a minute of hub retries;
* ``weights_path`` loads a local torchvision ``.pth``/``.pt`` or timm ``.safetensors``/``.bin`` state dict,
  and a file that does not fit the backbone is a clear error naming the file.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_HUB_PROBE_TIMEOUT_S = 3.0


class BackboneWeightsError(RuntimeError):
    """Pretrained backbone weights could not be obtained or do not fit the backbone."""


def layer_indices(backbone: str, layers: Sequence[str]) -> list[int]:
    """Map layer names (e.g. ``layer2``) to timm ``out_indices`` without building real weights."""
    with torch.device("meta"):
        probe = timm.create_model(backbone, pretrained=False, features_only=True)
    names = list(probe.feature_info.module_name())
    missing = [layer for layer in layers if layer not in names]
    if missing:
        msg = f"backbone {backbone!r} has no layer(s) {missing}; available: {names}"
        raise ValueError(msg)
    return [names.index(layer) for layer in layers]


def _hub_reachable() -> bool:
    """True if the model hub answers a TCP connect within a few seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _cached_hub_file(backbone: str) -> str | None:
    """Path of already-downloaded hub weights for ``backbone``, if any."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(backbone)
    hub_id = getattr(hub_id, "hf_hub_id", None) if hub_id is not None else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str):
            return cached
    return None


def _check_weights_file(weights_path: str | Path) -> Path:
    path = Path(weights_path).expanduser()
    if not path.is_file():
        msg = f"backbone weights file not found: {path}"
        raise FileNotFoundError(msg)
    if path.suffix not in WEIGHT_SUFFIXES:
        msg = f"backbone weights file {path} must end in one of {WEIGHT_SUFFIXES}"
        raise ValueError(msg)
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file; unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = f"cannot read backbone weights file {path}: {error}"
        raise BackboneWeightsError(msg) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"backbone weights file {path} does not hold a state dict of tensors"
        raise BackboneWeightsError(msg)
    return state


def _load_weights_file(extractor: nn.Module, backbone: str, path: Path) -> None:
    """Load ``path`` into the truncated ``extractor``, strictly: every file key must belong to ``backbone``.

    timm's own file loading only warns about foreign keys, so a ResNet-34 file would half-load into a
    ResNet-18; here that is an error. Keys of layers after the truncation point (and the head) are skipped.
    """
    state = _read_state_dict(path)
    with torch.device("meta"):
        full_keys = set(timm.create_model(backbone, pretrained=False).state_dict())
    wanted = extractor.state_dict()
    foreign = sorted(set(state) - full_keys)
    missing = sorted(set(wanted) - set(state))
    wrong_shape = sorted(k for k in wanted if k in state and state[k].shape != wanted[k].shape)
    problems = [
        f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (("unexpected keys", foreign), ("missing keys", missing), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        msg = f"backbone weights file {path} does not fit backbone {backbone!r} ({'; '.join(problems)})"
        raise BackboneWeightsError(msg)
    extractor.load_state_dict({key: state[key] for key in wanted})


def create_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    pre_trained: bool = True,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """Build a timm ``features_only`` network that ends at the deepest of ``layers``.

    Args:
        backbone: timm model name, e.g. ``wide_resnet50_2``.
        layers: feature layers to return, e.g. ``["layer2", "layer3"]``.
        pre_trained: load ImageNet weights from the hub (or its local cache).
        weights_path: local state-dict file; takes precedence over ``pre_trained``.

    Returns:
        Module mapping images ``(N, 3, H, W)`` to a list of feature maps, one per layer.
    """
    out_indices = layer_indices(backbone, layers)
    kwargs = {"features_only": True, "out_indices": out_indices}
    if weights_path is not None:
        path = _check_weights_file(weights_path)
        model = timm.create_model(backbone, pretrained=False, **kwargs)
        _load_weights_file(model, backbone, path)
        logger.info("Backbone %s: weights loaded from %s", backbone, path)
        return model
    if not pre_trained:
        logger.info("Backbone %s: random initialisation (pre_trained=False)", backbone)
        return timm.create_model(backbone, pretrained=False, **kwargs)
    cached = _cached_hub_file(backbone)
    if cached is not None:
        logger.info("Backbone %s: ImageNet weights from local hub cache %s", backbone, cached)
        return timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    if not _hub_reachable():
        msg = (
            f"Cannot download ImageNet weights for backbone {backbone!r}: the model hub is unreachable "
            "(no network, or HF_HUB_OFFLINE is set) and the weights are not in the local cache. "
            "Pass a local state-dict file (backbone_weights='/path/to/weights.pth' or '.safetensors'), "
            "or pre_trained=False to train on a randomly initialised backbone."
        )
        raise BackboneWeightsError(msg)
    logger.info("Backbone %s: downloading ImageNet weights from the hub", backbone)
    return timm.create_model(backbone, pretrained=True, **kwargs)


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop its gradients (BatchNorm statistics stay fixed too)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def weights_description(pre_trained: bool, weights_path: str | Path | None) -> str:
    """Human-readable statement of which backbone weights a model uses."""
    if weights_path is not None:
        return f"local file {weights_path}"
    return "ImageNet (timm hub)" if pre_trained else "random initialisation (pre_trained=False)"
