"""``--weights packaged|random|FILE``: the one backbone-weights option of every script that measures accuracy
(see ``docs/measuring.md``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from anomalib_simplenet.components.backbone import WEIGHT_SUFFIXES, weights_source

DEFAULT_BACKBONE = "efficientnet_lite0"
# SimpleNet on lite0's stride-8 and stride-16 stages (40 + 112 channels), embedded to their total width.
SIMPLENET_LITE0 = {"backbone": DEFAULT_BACKBONE, "layers": ["blocks.2", "blocks.4"], "pretrain_embed_dim": 152,
                   "target_embed_dim": 152}
# Model class → its argument holding a local weights file (``pre_trained`` is the switch of both).
_FILE_ARGUMENT = {"SimpleNet": "backbone_weights", "DistillClassifier": "teacher_weights"}
HELP = ("backbone/teacher weights: 'packaged' (ImageNet: hub cache, installed package, hub; works offline for "
        "efficientnet_lite0), 'random' (plumbing only) or a local state-dict FILE")


@dataclass(frozen=True)
class WeightsChoice:
    """A parsed ``--weights`` value: ``kind`` is ``packaged``, ``random`` or ``file`` (then ``path`` is set)."""

    kind: str
    path: Path | None = None

    @property
    def pre_trained(self) -> bool:
        """ImageNet weights requested (a file overrides ``pre_trained`` anyway)."""
        return self.kind != "random"

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else self.kind


def parse_weights(text: str) -> WeightsChoice:
    """argparse type of ``--weights``: a clear error for a missing file or a wrong suffix."""
    if text in ("packaged", "random"):
        return WeightsChoice(text)
    path = Path(text).expanduser()
    if not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
        msg = f"--weights must be 'packaged', 'random' or an existing {'/'.join(WEIGHT_SUFFIXES)} file, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return WeightsChoice("file", path)


def add_weights_argument(parser: argparse.ArgumentParser, default: str = "packaged") -> None:
    """Add ``--weights`` to ``parser`` (its value is a :class:`WeightsChoice`)."""
    parser.add_argument("--weights", type=parse_weights, default=parse_weights(default), help=HELP)


def weights_kwargs(model: str, choice: WeightsChoice) -> dict[str, Any]:
    """Constructor arguments of model class ``model`` for ``choice`` (``{}`` for models without a backbone)."""
    file_argument = _FILE_ARGUMENT.get(model)
    if file_argument is None:
        return {}
    return {"pre_trained": choice.pre_trained, file_argument: None if choice.path is None else str(choice.path)}


def weights_description(model: nn.Module) -> str:
    """Where the weights of ``model``'s pretrained networks came from (read back from the built networks)."""
    sources = {weights_source(m) for m in model.modules() if hasattr(m, "weights_source")}
    if teacher := getattr(model, "teacher_weights_source", None):
        sources.add(f"teacher: {teacher}")
    return "; ".join(sorted(sources)) or "none (no pretrained network)"
