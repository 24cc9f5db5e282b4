"""Unit tests of SimpleNet's torch model, loss, noise generator, fused fast paths and val_loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.engine import Engine
from lightning.pytorch.callbacks import EarlyStopping

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.models.simplenet.feature_noise import AnomalyFeatureGenerator
from anomalib_simplenet.models.simplenet.loss import TruncatedL1Loss
from anomalib_simplenet.models.simplenet.patch_features import PatchAggregator
from anomalib_simplenet.models.simplenet.torch_model import SimpleNetModel
from anomalib_simplenet.lab import data as lab_data

from .conftest import TINY_SIMPLENET

SMALL = {"backbone": "resnet18", "pre_trained": False, "pretrain_embed_dim": 64, "target_embed_dim": 64,
         "discriminator_hidden": 32}


@pytest.fixture(scope="module")
def model() -> SimpleNetModel:
    torch.manual_seed(0)
    return SimpleNetModel(**SMALL)


def test_backbone_stops_at_last_used_layer_and_is_frozen(model: SimpleNetModel) -> None:
    children = [name for name, _ in model.feature_extractor.named_children()]
    assert children[-1] == "layer3"
    assert "layer4" not in children
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())
    model.train()
    assert not model.feature_extractor.training, "frozen backbone must stay in eval mode during training"
    assert model.adapter.training and model.discriminator.training


def test_backbone_statistics_do_not_move_in_training(model: SimpleNetModel) -> None:
    model.train()
    before = {k: v.clone() for k, v in model.feature_extractor.state_dict().items()}
    model(torch.randn(2, 3, 64, 64))
    after = model.feature_extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_mode_shapes(model: SimpleNetModel) -> None:
    model.train()
    normal, noised = model(torch.randn(3, 3, 64, 64))
    assert normal.shape == noised.shape == (3, 1, 8, 8)  # layer2 grid: stride 8


@pytest.mark.parametrize(("height", "width"), [(64, 64), (72, 100)])
def test_eval_mode_returns_inference_batch(model: SimpleNetModel, height: int, width: int) -> None:
    model.eval()
    output = model(torch.randn(2, 3, height, width))
    assert isinstance(output, InferenceBatch)
    assert output.pred_score.shape == (2,)
    assert output.anomaly_map.shape == (2, 1, height, width)
    scores = model.score_map(model.extract_features(torch.randn(2, 3, height, width)))
    assert scores.shape[1] == 1


def test_image_score_is_max_of_location_scores(model: SimpleNetModel) -> None:
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    output = model(images)
    scores = model.score_map(model.extract_features(images))
    torch.testing.assert_close(output.pred_score, scores.flatten(1).max(dim=1).values)


def test_gradients_reach_adapter_and_discriminator_only(model: SimpleNetModel) -> None:
    model.train()
    normal, noised = model(torch.randn(2, 3, 64, 64))
    TruncatedL1Loss()(normal, noised).backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert all(p.grad is None for p in model.feature_extractor.parameters())


def test_embedding_shape(model: SimpleNetModel) -> None:
    model.eval()
    assert model.image_embedding(torch.randn(3, 3, 64, 64)).shape == (3, 64)


def test_truncated_l1_loss_values() -> None:
    loss = TruncatedL1Loss(margin=0.5)
    # normal: 1.0 is past the margin (0), 0.0 costs 0.5 → mean 0.25; noised: -1.0 → 0, 0.2 → 0.7 → mean 0.35
    value = loss(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.2]))
    torch.testing.assert_close(value, torch.tensor(0.6))
    assert loss(torch.tensor([0.5, 2.0]), torch.tensor([-0.5, -3.0])) == 0


def test_noise_generator_statistics() -> None:
    torch.manual_seed(0)
    features = torch.zeros(64, 32, 16, 16)
    noised = AnomalyFeatureGenerator(noise_std=0.015)(features)
    assert noised.shape == features.shape
    assert abs(noised.mean().item()) < 1e-3
    assert noised.std().item() == pytest.approx(0.015, rel=0.02)
    with pytest.raises(ValueError, match="noise_std"):
        AnomalyFeatureGenerator(noise_std=0.0)


def test_default_configuration_matches_paper() -> None:
    """wide_resnet50_2 keeps the official sizes by default; its σ=0.015 is the explicit absolute noise_std."""
    model = SimpleNetModel(backbone="wide_resnet50_2", pre_trained=False, noise_std=0.015)
    assert model.feature_extractor.feature_info.channels() == [512, 1024]
    assert model.aggregator.out_channels == 1536
    assert len(model.adapter) == 1
    hidden = model.discriminator[0]
    assert (hidden.in_channels, hidden.out_channels) == (1536, 1024)
    assert isinstance(model.discriminator[1], torch.nn.BatchNorm2d)
    assert model.discriminator[2].negative_slope == 0.2
    assert model.noise_generator.noise_std == 0.015
    assert model.anomaly_map_generator.sigma == 4.0


def test_training_steps_separate_normal_from_noised() -> None:
    """With the official optimisers and learning rates, the loss falls on a fixed batch of features."""
    torch.manual_seed(0)
    net = SimpleNetModel(**SMALL).train()
    features = net.extract_features(torch.randn(4, 3, 64, 64))
    adapter_opt = torch.optim.AdamW(net.adapter.parameters(), lr=1e-4)
    discriminator_opt = torch.optim.Adam(net.discriminator.parameters(), lr=2e-4, weight_decay=1e-5)
    loss_fn, losses = TruncatedL1Loss(), []
    for _ in range(30):
        loss = loss_fn(*net.discriminate(features))
        adapter_opt.zero_grad()
        discriminator_opt.zero_grad()
        loss.backward()
        adapter_opt.step()
        discriminator_opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_fused_head_equals_adapter_then_discriminator() -> None:
    """The folded adapter·discriminator product gives the unfolded network's outputs, with the same noise draw."""
    torch.manual_seed(0)
    net = SimpleNetModel(**SMALL, adapter_layers=2).train()
    features = net.extract_features(torch.randn(2, 3, 64, 64))
    torch.manual_seed(1)
    normal, noised = net.discriminate(features)
    torch.manual_seed(1)
    adapted = net.adapter(features)
    reference = net.discriminator(torch.cat([adapted, net.noise_generator(adapted)]))
    torch.testing.assert_close(torch.cat([normal, noised]), reference, rtol=1e-4, atol=1e-4)
    net.eval()
    torch.testing.assert_close(net.score_map(features), -net.discriminator(net.adapter(features)), rtol=1e-4, atol=1e-5)


def test_noise_generator_argument_gives_repeatable_draws(model: SimpleNetModel) -> None:
    model.eval()
    features = model.extract_features(torch.randn(2, 3, 64, 64))
    first = model.discriminate(features, generator=torch.Generator().manual_seed(3))[1]
    second = model.discriminate(features, generator=torch.Generator().manual_seed(3))[1]
    third = model.discriminate(features)[1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, third)


@pytest.mark.parametrize(("channels", "pre_dim", "target_dim", "fused"),
                         [([512, 1024], 1536, 1536, True), ([8, 16], 24, 16, True), ([8, 16], 48, 48, False)])
def test_fused_aggregation_equals_unfold_and_pool(channels: list[int], pre_dim: int, target_dim: int,
                                                  fused: bool) -> None:
    """The fused row-mean path gives the unfold → pool → resize → pool numbers (4608/9216 → 1536 → 768 by default)."""
    torch.manual_seed(0)
    maps = [torch.randn(2, channels[0], 12, 12), torch.randn(2, channels[1], 6, 6)]
    aggregator = PatchAggregator(channels, 3, pre_dim, target_dim)
    assert aggregator.fused is fused
    general = PatchAggregator(channels, 3, pre_dim, target_dim)
    general.row_groups = None
    torch.testing.assert_close(aggregator(maps), general(maps), rtol=1e-5, atol=1e-6)


def test_val_loss_drives_early_stopping(synthetic_root: Path, tmp_path: Path) -> None:
    """``val_loss`` (normal validation images, fixed noise) is logged during fit and EarlyStopping stops on it."""
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET)
    # min_delta far above any change: epoch 1 sets the best, epoch 2 does not improve → stop after 2 of 10.
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=1, min_delta=100.0)
    engine = Engine(max_epochs=10, default_root_dir=tmp_path, accelerator="cpu", logger=False,
                    enable_progress_bar=False, callbacks=[stopper])
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.current_epoch == 2
    assert stopper.stopped_epoch == 1
    val_loss = float(engine.trainer.callback_metrics["val_loss"])
    assert 0.0 < val_loss < 2.0
    # Fixed noise: validating the unchanged model again gives the same value.
    again = engine.validate(model, datamodule=datamodule)[0]["val_loss"]
    assert again == pytest.approx(val_loss, rel=1e-5)
    assert "val_loss" not in engine.test(model, datamodule=datamodule)[0]


def test_separable_blur_equals_anomalib_blur() -> None:
    """Two 1-D passes give anomalib's 2-D Gaussian blur, and the kernel stays the same checkpoint buffer."""
    from anomalib.models.components import GaussianBlur2d

    from anomalib_simplenet.components.blur import SeparableGaussianBlur2d

    maps = torch.rand(2, 1, 40, 56)
    separable, reference = SeparableGaussianBlur2d(sigma=4, kernel_size=33), GaussianBlur2d(sigma=4, kernel_size=33)
    torch.testing.assert_close(separable(maps), reference(maps), rtol=1e-5, atol=1e-6)
    assert separable.state_dict().keys() == reference.state_dict().keys()


def test_every_model_smooths_its_map_with_the_shared_blur() -> None:
    """One blur for all three maps: anomalib's kernel size for σ, and the size check's margin is half of it."""
    from anomalib_simplenet.components.blur import SeparableGaussianBlur2d, anomaly_map_blur, blur_margin
    from anomalib_simplenet.models.distill_classifier.anomaly_map import AnomalyMapGenerator as DistillMap
    from anomalib_simplenet.models.simplenet.anomaly_map import AnomalyMapGenerator
    from anomalib_simplenet.models.unet_ae.anomaly_map import AnomalyMapGenerator as UNetMap
    from anomalib_simplenet.models.unet_ae.ssim import SSIMMap

    assert anomaly_map_blur(0.0) is None
    assert anomaly_map_blur(4.0).kernel.shape[-2:] == (33, 33) and blur_margin(4.0) == 16
    maps = [AnomalyMapGenerator(sigma=2.0), DistillMap([64, 128], sigma=2.0), UNetMap(SSIMMap(), sigma=2.0)]
    assert all(isinstance(generator.blur, SeparableGaussianBlur2d) for generator in maps)
    assert all(generator.blur.kernel.shape[-1] == 2 * blur_margin(2.0) + 1 for generator in maps)


def test_fused_weights_are_reused_only_while_parameters_are_unchanged() -> None:
    torch.manual_seed(0)
    net = SimpleNetModel(**SMALL).eval()
    features = net.extract_features(torch.randn(2, 3, 64, 64))
    with torch.inference_mode():
        first = net.score_map(features)
        assert net._fused_cache is not None
        torch.testing.assert_close(net.score_map(features), first, rtol=0, atol=0)
    with torch.no_grad():
        net.adapter[0].weight.mul_(2.0)  # in place, as an optimiser step: the cached product is stale
        changed = net.score_map(features)
        torch.testing.assert_close(changed, -net.discriminator(net.adapter(features)), rtol=1e-4, atol=1e-5)
    assert not torch.equal(changed, first)
