"""Frozen timm teacher of DistillClassifier and the training-only heads that connect it to the student.

The student is always ResNet-18-structured (conv2_x at stride 4, conv3_x at stride 8). The teacher can be
any timm backbone: by default its deepest stage at stride 4 and at stride 8 (timm ``feature_info``
reductions) is matched to conv2_x and conv3_x. Where the teacher's channels differ, a 1×1 convolution
projects the student's map onto the teacher's channels (student → teacher, as in FitNets: a projection of
the frozen teacher's side could shrink towards whatever the student produces, this one cannot make the
targets easier). Where the grids differ, the teacher's map is resampled to the student's grid. The
projections and the optional task head are trained with the student and dropped with the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_simplenet.components.backbone import (
    BackboneWeightsError,
    create_feature_extractor,
    default_layers,
    feature_stages,
    freeze,
)

from .networks import STAGE_CHANNELS, STAGES

TEACHER_BACKBONE = "resnet18"
STAGE_REDUCTIONS = {"conv2_x": 4, "conv3_x": 8}
# Seed of the teacher's random initialisation (``pre_trained=False``): the same teacher on every run, so
# resumed and repeated runs distil towards the same targets.
RANDOM_TEACHER_SEED = 0


def _feature_stages(backbone: str) -> tuple[list[str], list[int], list[int]]:
    """Module names, channels and strides of the teacher's feature stages; errors name ``teacher_backbone``."""
    try:
        return feature_stages(backbone)
    except ValueError as error:
        raise ValueError(f"teacher_backbone {backbone!r}: {error}") from error


def resolve_teacher_layers(backbone: str, layers: Sequence[str] | None = None) -> list[str]:
    """Teacher layers matched to conv2_x and conv3_x: ``layers`` checked, or chosen by stride.

    Without ``layers`` the deepest stage at stride 4 and the deepest at stride 8 are taken (``layer1``,
    ``layer2`` for a ResNet; ``blocks.1``, ``blocks.2`` for an EfficientNet-Lite).
    """
    names, _, _ = _feature_stages(backbone)
    if layers is None:
        try:
            return default_layers(backbone, strides=tuple(STAGE_REDUCTIONS.values()))
        except ValueError as error:
            msg = f"teacher_backbone: {error} (matched to the student's {list(STAGES)}: teacher_layers=[...])"
            raise ValueError(msg) from error
    layers = [str(layer) for layer in layers] if not isinstance(layers, str) else [layers]
    unknown = [layer for layer in layers if layer not in names]
    if len(layers) != len(STAGES) or unknown or len(set(layers)) != len(layers):
        problem = f"unknown layer(s) {unknown}" if unknown else f"got {layers}"
        msg = (
            f"teacher_layers must name {len(STAGES)} different feature layers of {backbone!r} (matched to "
            f"{list(STAGES)} in that order); {problem}; available: {names}"
        )
        raise ValueError(msg)
    return layers


class Teacher(nn.Module):
    """Frozen timm backbone returning two feature maps, with projections and an optional trainable task head.

    The head is a linear probe on the teacher's pooled deeper map (the frozen backbone's features are the
    teacher's knowledge; the probe only maps them to the student's label space), trained with cross-entropy
    on the same task as the student. Its softened predictions are the soft labels of the distillation.

    Args:
        pre_trained: ImageNet weights (hub cache, installed package, then hub; fails fast offline).
        weights_path: local state-dict file; overrides ``pre_trained``.
        num_classes: outputs of the task head; 0 = no head.
        backbone: timm model name.
        layers: the two layers matched to conv2_x and conv3_x; ``None`` = by stride (4 and 8).
    """

    def __init__(
        self,
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        num_classes: int = 0,
        backbone: str = TEACHER_BACKBONE,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.layers = resolve_teacher_layers(backbone, layers)
        names, channels, _ = _feature_stages(backbone)
        self.channels = [channels[names.index(layer)] for layer in self.layers]
        if pre_trained or weights_path is not None:
            try:
                network = create_feature_extractor(backbone, self.layers, pre_trained, weights_path)
            except BackboneWeightsError as error:
                msg = f"DistillClassifier teacher: {error} (here the local file argument is teacher_weights=...)"
                raise BackboneWeightsError(msg) from error
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_TEACHER_SEED)
                network = create_feature_extractor(backbone, self.layers, pre_trained=False)
        self.backbone = freeze(network)
        self.projections = nn.ModuleList(
            nn.Identity() if STAGE_CHANNELS[stage] == teacher else nn.Conv2d(STAGE_CHANNELS[stage], teacher, 1)
            for stage, teacher in zip(STAGES, self.channels, strict=True)
        )
        self.head = nn.Linear(self.channels[-1], num_classes) if num_classes > 0 else None

    @property
    def weights_source(self) -> str:
        """Where the frozen backbone's weights came from."""
        return getattr(self.backbone, "weights_source", "unknown")

    def train(self, mode: bool = True) -> Teacher:
        """Switch mode, keeping the frozen backbone in eval mode (its BatchNorm statistics must not move)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Projections' and head's tensors (CPU copies): what a resumed ``fit`` must get back."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Images ``(N, 3, H, W)`` → the two teacher maps ``[(N, C_t, h, w)]`` and the head's logits."""
        with torch.no_grad():
            maps = list(self.backbone(images))
        logits = self.head(maps[-1].mean(dim=(2, 3))) if self.head is not None else None
        return maps, logits

    def align(
        self, teacher_maps: Sequence[torch.Tensor], student_maps: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Same-shaped pairs: teacher maps on the student's grids, student maps projected to teacher channels."""
        targets = [
            t if t.shape[-2:] == s.shape[-2:] else F.interpolate(t, size=s.shape[-2:], mode="bilinear")
            for t, s in zip(teacher_maps, student_maps, strict=True)
        ]
        projected = [projection(s) for projection, s in zip(self.projections, student_maps, strict=True)]
        return targets, projected
