"""Feature-grid geometry: cell positions measured without data, resampling on them, and the map-offset metric."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomalib_simplenet.components import grid_geometry
from anomalib_simplenet.components.grid_geometry import (
    interpolation_weights,
    measure_geometry,
    measure_module_geometry,
    naive_geometry,
    resample,
    weights_fingerprint,
)
from anomalib_simplenet.lab.map_offset import map_offsets, mean_map_offset
from anomalib_simplenet.models.simplenet.torch_model import SimpleNetModel


class BoxConvs(nn.Module):
    """Two stride-2 3×3 box filters (all-ones kernels) with the given padding: positions known exactly."""

    def __init__(self, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(3, 3, kernel_size=3, stride=2, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first = F.relu(self.conv(F.pad(images, self.pad)))
        return [first, F.relu(self.conv(F.pad(first, self.pad)))]


@pytest.mark.parametrize(
    ("pad", "offsets"),
    [
        ((1, 1, 1, 1), (0.0, 0.0)),  # zero "same" padding (PyTorch): cell i at pixel s·i
        ((0, 0, 0, 0), (1.0, 3.0)),  # "valid": cell i reads pixels 2i..2i+2, then 4i..4i+6
        ((0, 1, 0, 1), (1.0, 3.0)),  # TF "same" on even sizes pads right/bottom only: as "valid" on the left
    ],
)
def test_measured_positions_of_known_paddings(pad: tuple[int, int, int, int], offsets: tuple[float, float]) -> None:
    geometry = measure_geometry(BoxConvs(pad), strides=[2, 4], probe_size=64)
    expected = torch.tensor([[[offsets[0]] * 2, [2.0, 2.0]], [[offsets[1]] * 2, [4.0, 4.0]]])
    torch.testing.assert_close(geometry, expected, atol=0.05, rtol=0)


class BroadBox(nn.Module):
    """One stride-4 33×33 box filter, zero "same" padding: cell ``i`` at pixel ``4i``, responding over ±16 px."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel_size=33, stride=4, padding=16, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(images)]


def test_probe_grows_until_it_holds_a_broad_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 48-px probe cuts the response off (the blob sits 10–24 px from its border): the mean cell is pulled
    towards the centre; the grown probe gives the analytic offset."""
    torch.testing.assert_close(measure_geometry(BroadBox(), [4], probe_size=48)[0, 0], torch.zeros(2), atol=0.05,
                               rtol=0)
    monkeypatch.setattr(grid_geometry, "MAX_PROBE_SIZE", 48)
    with pytest.warns(UserWarning, match="border of a 48-px probe"):
        biased = measure_geometry(BroadBox(), [4], probe_size=48)
    assert (biased[0, 0].abs() > 1.0).all(), biased


def test_resnet_geometry_is_the_analytic_one_and_deterministic() -> None:
    """Zero-padded ResNet-18 (random weights): cells at ``s·i``, i.e. ``(s − 1)/2`` up-left of interpolate's."""
    torch.manual_seed(0)
    model = SimpleNetModel(backbone="resnet18", pre_trained=False, target_embed_dim=64, pretrain_embed_dim=64)
    offsets = model.grid_geometry[:, 0]
    assert offsets.abs().max() < 1.0, offsets
    torch.testing.assert_close(model.grid_geometry[:, 1], torch.tensor([[8.0, 8.0], [16.0, 16.0]]))
    again = SimpleNetModel(backbone="resnet18", pre_trained=False, target_embed_dim=64, pretrain_embed_dim=64)
    again.load_state_dict(model.state_dict())  # same backbone weights → the same measurement
    remeasured = measure_geometry(again.feature_extractor.eval(), [8, 16])  # the probe itself, not the cache
    torch.testing.assert_close(remeasured, model.grid_geometry)


class CountingBoxConvs(BoxConvs):
    """:class:`BoxConvs` that counts its forward passes."""

    calls = 0

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        CountingBoxConvs.calls += 1
        return super().forward(images)


def test_module_geometry_is_measured_once_per_network_weights() -> None:
    first, same, other = (CountingBoxConvs((1, 1, 1, 1)) for _ in range(3))
    with torch.no_grad():
        other.conv.weight[:, :, 0, 0] = 0.0  # shifts where its cells look: other weights, another measurement
    CountingBoxConvs.calls = 0
    measured = measure_module_geometry(first, [2, 4], probe_size=64)
    torch.testing.assert_close(measured, measure_geometry(first, [2, 4], probe_size=64))
    CountingBoxConvs.calls = 0
    torch.testing.assert_close(measure_module_geometry(same, [2, 4], probe_size=64), measured)
    assert CountingBoxConvs.calls == 0  # same class and weights: reused
    changed = measure_module_geometry(other, [2, 4], probe_size=64)
    assert CountingBoxConvs.calls == 1
    assert not torch.allclose(changed, measured)
    measure_module_geometry(first, [2, 4], probe_size=96)  # another probe size is another measurement
    assert CountingBoxConvs.calls == 2
    assert weights_fingerprint(first) == weights_fingerprint(same) != weights_fingerprint(other)


def test_geometry_travels_in_the_state_dict_and_old_checkpoints_still_load() -> None:
    model = SimpleNetModel(backbone="resnet18", pre_trained=False, target_embed_dim=64, pretrain_embed_dim=64)
    state = model.state_dict()
    assert "grid_geometry" in state
    other = SimpleNetModel(backbone="resnet18", pre_trained=False, target_embed_dim=64, pretrain_embed_dim=64)
    state["grid_geometry"] = state["grid_geometry"] + 1.0
    other.load_state_dict(state)
    torch.testing.assert_close(other.grid_geometry, state["grid_geometry"])
    del state["grid_geometry"]  # a checkpoint written before the geometry existed
    measured = other.grid_geometry.clone()
    other.load_state_dict(state)
    torch.testing.assert_close(other.grid_geometry, measured)


def test_switched_off_is_the_official_interpolation() -> None:
    torch.manual_seed(0)
    model = SimpleNetModel(
        backbone="resnet18", pre_trained=False, target_embed_dim=64, pretrain_embed_dim=64, grid_alignment=False
    ).eval()
    torch.testing.assert_close(model.grid_geometry, naive_geometry([8, 16]))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = model.feature_extractor(images)
        features = model.extract_features(images)
        scores = model.score_map(features)
        expected_map = model.anomaly_map_generator.blur(
            F.interpolate(scores, size=(64, 64), mode="bilinear", align_corners=False)
        )
        # The assumed geometry reproduces the official path, whose numbers the aggregator tests pin.
        torch.testing.assert_close(features, model.aggregator(maps, naive_geometry([8, 16])), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(images).anomaly_map, expected_map)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_resample_on_the_assumed_grid_equals_interpolate(stride: int) -> None:
    maps = torch.randn(2, 3, 7, 5)
    size = (7 * stride, 5 * stride)
    expected = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample(maps, size, naive_geometry([stride])[0]), expected, atol=1e-5, rtol=0)
    coarse = naive_geometry([2 * stride])[0]
    expected = F.interpolate(maps, size=(14, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample(maps, (14, 10), coarse, naive_geometry([stride])[0]), expected)


def test_resample_puts_a_cell_at_its_position() -> None:
    impulse = torch.zeros(1, 1, 10, 10)
    impulse[0, 0, 5, 3] = 1.0
    geometry = torch.tensor([[-3.0, 2.0], [8.0, 8.0]])  # (offset, stride) × (y, x)
    upsampled = resample(impulse, (80, 80), geometry)
    assert divmod(int(upsampled.argmax()), 80) == (8 * 5 - 3, 8 * 3 + 2)
    weights = interpolation_weights(10, 80, geometry[:, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(80))  # edges extend outwards, rows sum to 1


def test_map_offset_measures_a_known_shift() -> None:
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 20:30, 10:20] = 1
    masks[1, :, 40:50, 30:40] = 1
    maps = torch.roll(masks, shifts=(3, -5), dims=(2, 3)) + 0.01 * torch.rand(2, 1, 64, 64)
    dx, dy = mean_map_offset(maps, masks, top_fraction=0.02)
    assert dx == pytest.approx(-5, abs=0.5) and dy == pytest.approx(3, abs=0.5)
    no_defect = torch.zeros(1, 1, 64, 64)
    assert map_offsets(torch.rand(1, 1, 64, 64), no_defect).shape == (0, 2)
    with pytest.raises(ValueError, match="differ in size"):
        map_offsets(maps, masks[:, :, :32])


def test_kept_weights_serve_inference_and_autograd_alike() -> None:
    geometry = torch.tensor([[-3.0, -2.0], [8.0, 8.0]])
    with torch.inference_mode():
        first = resample(torch.ones(1, 1, 4, 4), (32, 32), geometry)
    maps = torch.rand(1, 1, 4, 4, requires_grad=True)
    resample(maps, (32, 32), geometry).sum().backward()  # the same kept weights, now in an autograd graph
    assert maps.grad is not None and torch.allclose(first, torch.ones_like(first))
