"""SimpleNet's features-level training step: the Lightning module and the feature sweep share it."""

from __future__ import annotations

import pytest
import torch

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.models.simplenet.training_step import discriminator_step

SMALL = {"backbone": "resnet18", "pre_trained": False, "pretrain_embed_dim": 32, "target_embed_dim": 32,
         "discriminator_hidden": 16, "image_size": 64}


def test_steps_on_features_lower_the_loss_and_update_both_networks() -> None:
    torch.manual_seed(0)
    model = SimpleNet(**SMALL)
    network = model.model.train()
    features = torch.randn(8, 32, 8, 8)
    optimizers = model.configure_optimizers()
    before = [p.detach().clone() for p in (*network.adapter.parameters(), *network.discriminator.parameters())]
    losses = [discriminator_step(network, model.loss, features, optimizers).loss.item() for _ in range(30)]
    after = [*network.adapter.parameters(), *network.discriminator.parameters()]
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_check_sees_the_terms_before_any_weight_changes() -> None:
    torch.manual_seed(0)
    model = SimpleNet(**SMALL)
    network = model.model.train()
    weights = [p.detach().clone() for p in network.discriminator.parameters()]

    def refuse(terms: dict[str, torch.Tensor]) -> None:
        assert set(terms) == {"truncated_l1", "normal_scores", "noised_scores"}
        raise FloatingPointError("stop")

    with pytest.raises(FloatingPointError, match="stop"):
        discriminator_step(network, model.loss, torch.randn(2, 32, 8, 8), model.configure_optimizers(), check=refuse)
    assert all(torch.equal(w, p) for w, p in zip(weights, network.discriminator.parameters(), strict=True))
