"""Unit tests of UNetAE's torch model, SSIM, loss, anomaly map, skip control and reconstruction grid."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib import LearningType
from anomalib.data import InferenceBatch
from anomalib.models import AnomalibModule
from PIL import Image

from anomalib_simplenet.models.unet_ae import UNetAE, UNetAEModel, save_reconstructions
from anomalib_simplenet.models.unet_ae.anomaly_map import AnomalyMapGenerator, image_score
from anomalib_simplenet.models.unet_ae.loss import ReconstructionLoss
from anomalib_simplenet.models.unet_ae.ssim import SSIMMap

SMALL = {"depth": 3, "base_channels": 8, "latent_dim": 16}


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(64, 64), (50, 72)])
def test_shapes_for_several_depths(depth: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = UNetAEModel(depth=depth, base_channels=4, latent_dim=8)
    images = torch.rand(2, 3, height, width)
    model.train()
    reconstruction = model(images)
    assert reconstruction.shape == images.shape
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    model.eval()
    output = model(images)
    assert isinstance(output, InferenceBatch)
    assert output.pred_score.shape == (2,)
    assert output.anomaly_map.shape == (2, 1, height, width)
    latent, skips = model.encode(images)
    stride = 2**depth
    assert latent.shape == (2, 8, -(-height // stride), -(-width // stride))  # inputs padded up to the stride
    assert len(skips) == depth


def test_embedding_is_pooled_bottleneck() -> None:
    model = UNetAEModel(**SMALL).eval()
    images = torch.rand(3, 3, 64, 64)
    embedding = model.image_embedding(images)
    assert embedding.shape == (3, 16)
    torch.testing.assert_close(embedding, model.encode(images)[0].mean(dim=(2, 3)))
    reconstruction, same = model.reconstruct_and_embed(images)
    torch.testing.assert_close(same, embedding)
    torch.testing.assert_close(reconstruction, model.reconstruct(images))


@pytest.mark.parametrize(("skip_levels", "expected"), [(0, []), (1, [2]), (3, [0, 1, 2])])
def test_skip_levels_select_deepest_levels(skip_levels: int, expected: list[int]) -> None:
    model = UNetAEModel(**SMALL, skip_levels=skip_levels)
    assert [level for level, on in enumerate(model.skipped) if on] == expected
    # Decoder block for level l takes upsampled level-(l+1) features plus, with a skip, level-l features.
    widths = [8, 16, 32, 64]
    for block, level in zip(model.decoder, reversed(range(3)), strict=True):
        skip = widths[level] if level in expected else 0
        assert block.block[0].in_channels == widths[level + 1] + skip


def _copy_ratio(model: UNetAEModel, clean: torch.Tensor) -> float:
    """How much of a dark square painted into ``clean`` reaches the reconstruction (1 = copied through)."""
    defect = clean.clone()
    defect[..., 12:22, 12:22] = 0.0
    model.eval()
    with torch.no_grad():
        change = (model.reconstruct(defect) - model.reconstruct(clean))[..., 12:22, 12:22].abs().mean()
    return (change / (defect - clean)[..., 12:22, 12:22].abs().mean()).item()


def test_default_skips_do_not_copy_defects_like_a_full_unet(synthetic_root: Path) -> None:
    """Briefly trained on normal texture, a full U-Net passes a painted defect through, the default much less."""
    files = sorted((synthetic_root / "synthetic" / "train" / "good").glob("*.png"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])
    images = images.permute(0, 3, 1, 2).float().div(255)[:8, :, :32, :32]
    ratios = {}
    for name, skip_levels in (("full", 3), ("default", inspect.signature(UNetAE).parameters["skip_levels"].default)):
        torch.manual_seed(0)
        model = UNetAEModel(**SMALL, skip_levels=skip_levels)
        loss = ReconstructionLoss(model.anomaly_map_generator.ssim)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(40):
            optimizer.zero_grad()
            loss(model(images), images).backward()
            optimizer.step()
        ratios[name] = _copy_ratio(model, images[:4])
    # Measured (8 images, 40 steps, seeds 0 / 1): full 0.29 / 0.18, default 0.027 / 0.016.
    assert ratios["full"] > 0.1, ratios
    assert ratios["default"] < 0.3 * ratios["full"], ratios


def test_masking_hides_patches_only_in_training() -> None:
    torch.manual_seed(0)
    model = UNetAEModel(**SMALL, mask_ratio=0.5, mask_patch_size=8)
    images = torch.rand(4, 3, 64, 64)
    masked = model.mask(images)
    hidden = (masked != images).any(dim=1)
    assert 0.2 < hidden.float().mean() < 0.8
    # Hidden squares are aligned 8×8 blocks filled with the image mean.
    blocks = hidden.reshape(4, 8, 8, 8, 8).float().mean(dim=(2, 4))
    assert set(blocks.unique().tolist()) <= {0.0, 1.0}
    fill = images[0].mean(dim=(1, 2))[:, None]
    torch.testing.assert_close(masked[0][:, hidden[0]], fill.expand(-1, int(hidden[0].sum())))
    assert torch.equal(UNetAEModel(**SMALL).mask(images), images)


def test_ssim_map_is_one_for_identical_images_and_drops_with_noise() -> None:
    ssim = SSIMMap(channels=3)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(ssim(images, images), torch.ones_like(images))
    noisy = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)
    assert ssim(images, noisy).mean() < 0.9
    with pytest.raises(ValueError, match="window_size"):
        SSIMMap(window_size=4)


def test_loss_is_zero_for_identical_images_and_weighted() -> None:
    ssim = SSIMMap(channels=3)
    images = torch.rand(2, 3, 32, 32)
    other = torch.rand(2, 3, 32, 32)
    assert ReconstructionLoss(ssim)(images, images).item() == pytest.approx(0.0, abs=1e-6)
    l2, dssim = ReconstructionLoss(ssim).terms(other, images)
    torch.testing.assert_close(l2, ((other - images) ** 2).flatten(1).mean(dim=1))
    torch.testing.assert_close(dssim, 1 - ssim(other, images).flatten(1).mean(dim=1))
    torch.testing.assert_close(ReconstructionLoss(ssim, 2.0, 0.0)(other, images), 2 * l2.mean())
    torch.testing.assert_close(ReconstructionLoss(ssim, 1.0, 3.0)(other, images), (l2 + 3 * dssim).mean())
    with pytest.raises(ValueError, match="ssim_weight"):
        ReconstructionLoss(ssim, 1.0, -1.0)
    with pytest.raises(ValueError, match="cannot all be 0"):
        ReconstructionLoss(ssim, 0.0, 0.0)


def test_anomaly_map_is_zero_for_perfect_reconstruction_and_smoothed() -> None:
    images = torch.rand(2, 3, 64, 64)
    raw = AnomalyMapGenerator(SSIMMap(), sigma=0.0)
    smooth = AnomalyMapGenerator(SSIMMap(), sigma=4.0)
    assert smooth(images, images).shape == (2, 1, 64, 64)
    assert smooth(images, images).abs().max() < 1e-6
    reconstruction = images.clone()
    reconstruction[:, :, 32, 32] = 1 - reconstruction[:, :, 32, 32]  # a one-pixel error
    raw_map, smooth_map = raw(images, reconstruction), smooth(images, reconstruction)
    assert smooth_map.max() < raw_map.max()
    # The blur spreads the error: 8 pixels away (beyond the SSIM window) the raw map is 0, the smoothed one is not.
    assert (raw_map[:, 0, 32, 40] == 0).all()
    assert (smooth_map[:, 0, 32, 40] > 1e-4).all()
    assert smooth_map[0, 0].argmax() == raw_map[0, 0].argmax()  # peaks stay in place
    with pytest.raises(ValueError, match="anomaly_map_sigma"):
        AnomalyMapGenerator(SSIMMap(), sigma=-1.0)


def test_image_score_modes() -> None:
    anomaly_map = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(image_score(anomaly_map, "max"), anomaly_map.flatten(1).amax(dim=1))
    top = anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :10].mean(dim=1)
    torch.testing.assert_close(image_score(anomaly_map, "topk_mean", top_k=10), top)
    torch.testing.assert_close(image_score(anomaly_map, "topk_mean", top_k=10_000), anomaly_map.flatten(1).mean(1))
    with pytest.raises(ValueError, match="score_mode"):
        image_score(anomaly_map, "mean")


def test_embedding_score_combines_standardised_distance() -> None:
    torch.manual_seed(0)
    model = UNetAEModel(**SMALL, use_embedding_score=True, embedding_weight=0.5).eval()
    normal = torch.rand(24, 3, 32, 32)
    with torch.no_grad():
        reconstruction, embeddings = model.reconstruct_and_embed(normal)
        map_scores = image_score(model.anomaly_map_generator(normal, reconstruction))
        model.fit_embedding_distribution(embeddings, map_scores)
        assert model.mahalanobis.fitted
        images = torch.rand(3, 3, 32, 32)
        output = model(images)
        reconstruction, embedding = model.reconstruct_and_embed(images)
        map_score = image_score(model.anomaly_map_generator(images, reconstruction))
    distance = model.mahalanobis(embedding)
    dist_train = model.mahalanobis(embeddings)
    expected = (map_score - map_scores.mean()) / map_scores.std() + 0.5 * (
        distance - dist_train.mean()
    ) / dist_train.std()
    torch.testing.assert_close(output.pred_score, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="use_embedding_score"):
        UNetAEModel(**SMALL).fit_embedding_distribution(embeddings, map_scores)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"depth": 0}, "depth"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"skip_levels": 4}, "skip_levels"),
        ({"skip_dropout": 1.0}, "skip_dropout"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"score_mode": "mean"}, "score_mode"),
        ({"top_k": 0}, "top_k"),
        ({"map_l2_weight": -1.0}, "map_l2_weight"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        UNetAEModel(**{**SMALL, **kwargs})


def test_lightning_model_defaults_and_pre_processor() -> None:
    model = UNetAE(image_size=(64, 48), **SMALL)
    assert model.input_size == (64, 48)
    transformed = model.pre_processor.transform(torch.rand(1, 3, 100, 80))
    assert transformed.min() >= 0 and transformed.max() <= 1, "no ImageNet normalisation: AE outputs [0, 1]"
    assert model.learning_type == LearningType.ONE_CLASS
    assert AnomalibModule in UNetAE.__bases__
    with pytest.raises(ValueError, match="image_size"):
        UNetAE(image_size=0)


def test_registered_with_anomalib() -> None:
    from anomalib.models import get_model, list_models

    assert "UNetAE" in list_models(case="pascal")
    model = get_model("UNetAE", latent_dim=32, image_size=64)
    assert type(model) is UNetAE and model.model.to_latent.out_channels == 32


def test_save_reconstructions_writes_grid(tmp_path: Path) -> None:
    model = UNetAE(image_size=32, **SMALL)
    path = save_reconstructions(model, torch.rand(3, 3, 32, 32), tmp_path / "grid" / "recon.png")
    with Image.open(path) as image:
        assert image.size == (3 * 32 + 4 * 2, 3 * 32 + 4 * 2)  # 3 columns, 3 rows, 2 px padding
    assert model.model.training, "saving must restore the model's mode"
    with pytest.raises(TypeError, match="UNetAE"):
        save_reconstructions(torch.nn.Linear(2, 2), torch.rand(1, 3, 8, 8), tmp_path / "x.png")
