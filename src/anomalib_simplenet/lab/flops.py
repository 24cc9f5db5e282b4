"""Floating-point operations of one forward pass, counted by :class:`torch.utils.flop_counter.FlopCounterMode`: a
multiply-add is 2 FLOPs; only convolutions, matrix products and attention count (a lower bound close to the total in
convolutional networks, comparable across models)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(module: torch.nn.Module, input_size: tuple[int, int], channels: int = 3) -> int:
    """FLOPs of ``module``'s eval forward on one random image ``(1, channels, H, W)``, ``input_size = (H, W)``; the
    module's train/eval mode is restored afterwards."""
    if len(input_size) != 2 or min(input_size) <= 0:
        msg = f"input_size must be (height, width) with positive sides, got {input_size!r}"
        raise ValueError(msg)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.rand(1, channels, *input_size))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())
