"""The exportable antialiased resize: same maths as torch's antialiased bilinear, kept through anomalib's export
conversion and checkpoints, and equal in an exported OpenVINO graph for images of any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anomalib.pre_processing import PreProcessor
from torchvision import tv_tensors
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_simplenet.components.pre_processing import (
    ExportablePreProcessor,
    imagenet_pre_processor,
    resize_pre_processor,
)
from anomalib_simplenet.components.resize import AntialiasedResize, antialiased_resize, triangle_weights
from anomalib_simplenet.deploy import FP32_CPU_CONFIG

SIZES = [(900, 900), (333, 517), (64, 64), (20, 30), (1, 1)]


def _noisy(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``(1, 3, H, W)`` image with pixel-level noise: the content on which aliasing changes a resize most."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator)


@pytest.mark.parametrize("size", SIZES)
def test_matches_torch_antialiased_bilinear(size: tuple[int, int]) -> None:
    """Shrinking, enlarging, odd and non-square: equal to F.interpolate(antialias=True) to float rounding."""
    images = _noisy(*size)
    expected = F.interpolate(images, size=(64, 48), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(antialiased_resize(images, (64, 48)), expected, atol=1e-6, rtol=0)


def test_weights_are_a_normalised_band() -> None:
    weights = triangle_weights(900, 256, torch.float32, torch.device("cpu"))
    assert weights.shape == (256, 900)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(256))
    assert ((weights > 0).sum(dim=1) <= 8).all()  # support ±3.5 input pixels: a local filter, not a blur


def test_transform_handles_images_masks_and_plain_tensors() -> None:
    resize = AntialiasedResize((32, 40))
    image = tv_tensors.Image(torch.rand(3, 100, 90))
    mask = tv_tensors.Mask((torch.rand(100, 90) > 0.5).to(torch.uint8))
    out_image, out_mask = resize(image, mask)
    assert isinstance(out_image, tv_tensors.Image) and out_image.shape == (3, 32, 40)
    assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.uint8
    assert set(out_mask.unique().tolist()) <= {0, 1}  # nearest for masks, as a plain Resize
    torch.testing.assert_close(resize(image.as_subclass(torch.Tensor)), out_image.as_subclass(torch.Tensor))
    with pytest.raises(ValueError, match="AntialiasedResize"):
        AntialiasedResize((32,))


@pytest.mark.parametrize("factory", [imagenet_pre_processor, resize_pre_processor])
def test_export_transform_keeps_the_antialiased_resize(factory: object) -> None:
    """anomalib's ``get_exportable_transform`` must not swap it for a non-antialiased resize."""
    pre_processor = factory(64)
    assert isinstance(pre_processor.export_transform.transforms[0], AntialiasedResize)
    images = _noisy(900, 900)
    torch.testing.assert_close(pre_processor.export_transform(images), pre_processor.transform(images))
    # The plain anomalib pre-processor differs a lot here: the reason for this design.
    plain = PreProcessor(transform=Resize((64, 64), antialias=True))
    assert (plain.export_transform(images) - plain.transform(images)).abs().max() > 0.1


def test_checkpoint_spec_is_plain_anomalib_and_round_trips() -> None:
    pre_processor = imagenet_pre_processor((64, 48))
    config = pre_processor.checkpoint_config()
    resize_spec = config["transform"]["init_args"]["transforms"][0]
    assert resize_spec["class_path"] == "torchvision.transforms.v2.Resize"  # loadable by anomalib alone
    assert resize_spec["init_args"]["antialias"] is True

    restored = imagenet_pre_processor(32)
    restored.load_checkpoint_config(config)
    assert isinstance(restored.transform.transforms[0], AntialiasedResize)
    assert restored.transform.transforms[0].size == [64, 48]
    assert isinstance(restored.export_transform.transforms[0], AntialiasedResize)


def test_old_checkpoint_spec_loads_with_the_exportable_resize() -> None:
    """A spec written by the former pre-processor (torchvision Resize + Normalize) still loads."""
    old = PreProcessor(transform=Compose([Resize((64, 64), antialias=True), Normalize((0.5,) * 3, (0.2,) * 3)]))
    restored = imagenet_pre_processor(64)
    restored.load_checkpoint_config(old.checkpoint_config())
    assert isinstance(restored.transform.transforms[0], AntialiasedResize)
    images = _noisy(200, 300)
    torch.testing.assert_close(restored.transform(images), old.transform(images), atol=1e-5, rtol=0)


def test_other_resizes_are_left_alone() -> None:
    nearest = Resize((64, 64), interpolation=0)  # not the bilinear filter: kept as is
    shorter_side = Resize(64, antialias=True)  # no fixed output size
    pre_processor = ExportablePreProcessor(Compose([nearest, shorter_side]))
    assert [type(t) for t in pre_processor.transform.transforms] == [Resize, Resize]


@pytest.mark.slow  # ONNX export and OpenVINO conversion
def test_exported_pre_processor_matches_torch_on_any_size(tmp_path: Path) -> None:
    """One dynamic-size ONNX graph → OpenVINO; outputs equal torch's for large, odd and small inputs."""
    import openvino as ov

    pre_processor = imagenet_pre_processor((64, 48)).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    path = tmp_path / "pre_processor.onnx"
    torch.onnx.export(pre_processor, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=True, dynamic_shapes=(dims,))
    compiled = ov.Core().compile_model(ov.convert_model(path), "CPU", FP32_CPU_CONFIG)
    for size in SIZES[:-1]:
        images = _noisy(*size)
        result = np.asarray(compiled(images.numpy())[0])
        expected = pre_processor.transform(images).numpy()
        assert result.shape == (1, 3, 64, 48)
        assert np.abs(result - expected).max() < 1e-4, size
