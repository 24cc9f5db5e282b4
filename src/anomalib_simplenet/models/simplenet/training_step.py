"""SimpleNet's training step on patch features: shared by the Lightning module and feature-level sweeps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .loss import TruncatedL1Loss
from .torch_model import SimpleNetModel


class StepOutput(NamedTuple):
    """The step's loss (scalar, with graph) and the discriminator scores it came from."""

    loss: torch.Tensor
    normal_scores: torch.Tensor
    noised_scores: torch.Tensor


def discriminator_step(
    network: SimpleNetModel,
    loss_fn: TruncatedL1Loss,
    features: torch.Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    check: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> StepOutput:
    """One update of adapter and discriminator from frozen features ``(B, D, h, w)`` of normal images.

    The adapted features and their noised copies go through the discriminator, the truncated L1 loss pulls them
    apart, and every optimiser steps once (SimpleNet has two of different kinds). ``backward`` lets Lightning's
    ``manual_backward`` take the place of ``loss.backward()``; ``check`` sees the loss and scores before the
    backward pass (e.g. to stop on non-finite values before they reach the weights).
    """
    normal_scores, noised_scores = network.discriminate(features)
    loss = loss_fn(normal_scores, noised_scores)
    if check is not None:
        check({"truncated_l1": loss, "normal_scores": normal_scores, "noised_scores": noised_scores})
    for optimizer in optimizers:
        optimizer.zero_grad()
    backward(loss)
    for optimizer in optimizers:
        optimizer.step()
    return StepOutput(loss, normal_scores, noised_scores)
