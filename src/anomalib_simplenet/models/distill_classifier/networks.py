"""Student of DistillClassifier: ResNet-18 up to conv3_x plus a classification head.

Stage names follow the ResNet paper: ``conv2_x`` is timm/torchvision ``layer1`` (64 channels, stride 4) and
``conv3_x`` is ``layer2`` (128 channels, stride 8). The teacher lives in :mod:`.teacher`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

STAGES = ("conv2_x", "conv3_x")
STAGE_CHANNELS = {"conv2_x": 64, "conv3_x": 128}
EMBEDDING_DIM = 128


class StudentFeatures(NamedTuple):
    """Maps ``conv2_x`` ``(N, 64, H/4, W/4)``, ``conv3_x`` ``(N, 128, H/8, W/8)``; ``embedding`` ``(N, 128)``."""

    conv2_x: torch.Tensor
    conv3_x: torch.Tensor
    embedding: torch.Tensor


class StudentOutput(NamedTuple):
    """Training-time student output: the features plus classification ``logits`` ``(N, K)``."""

    features: StudentFeatures
    logits: torch.Tensor


def stage_grid(image_size: tuple[int, int], stage: str) -> tuple[int, int]:
    """Feature-map size of ``stage`` for an input of ``image_size`` (every stride-2 layer rounds up)."""
    halvings = {"conv2_x": 2, "conv3_x": 3}[stage]
    height, width = image_size
    for _ in range(halvings):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


class Student(nn.Module):
    """ResNet-18 structure up to conv3_x, then global average pooling and a linear classifier.

    * ``conv1``: 7×7/64 convolution (stride 2), BatchNorm, ReLU, 3×3 max-pool (stride 2).
    * ``conv2_x``: 2 BasicBlocks, 64 channels.
    * ``conv3_x``: 2 BasicBlocks, 128 channels, the first with stride 2.
    * ``fc``: linear layer on the pooled ``conv3_x`` map (the image embedding, 128-d).

    Args:
        num_classes: outputs of the classification head.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2_x = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        downsample = nn.Sequential(nn.Conv2d(64, 128, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.conv3_x = nn.Sequential(BasicBlock(64, 128, stride=2, downsample=downsample), BasicBlock(128, 128))
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation (BasicBlock itself leaves PyTorch's defaults).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs."""
        if num_classes < 1:
            msg = f"num_classes must be >= 1, got {num_classes}"
            raise ValueError(msg)
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes).to(self.fc.weight.device)

    def features(self, images: torch.Tensor) -> StudentFeatures:
        """Images ``(N, 3, H, W)`` → stage maps and pooled embedding (no classifier: inference path)."""
        conv2_x = self.conv2_x(self.conv1(images))
        conv3_x = self.conv3_x(conv2_x)
        return StudentFeatures(conv2_x, conv3_x, conv3_x.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> StudentOutput:
        """Features and logits ``(N, num_classes)`` (training path)."""
        features = self.features(images)
        return StudentOutput(features, self.fc(features.embedding))
