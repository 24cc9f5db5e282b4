"""Shorter-side resize + centre crop (the official SimpleNet geometry) as a pre-processor option: the same pixels
as torchvision's ``Resize`` + ``CenterCrop``, masks alike, fixed-size batches from variable-size data, plain
anomalib checkpoint specs, and equal outputs in an exported OpenVINO graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.center_crop import ResizeCenterCrop, crop_geometry
from anomalib_simplenet.components.pre_processing import CenterCropPreProcessor, imagenet_pre_processor
from anomalib_simplenet.deploy import FP32_CPU_CONFIG
from anomalib_simplenet.lab import data as lab_data

from .conftest import TINY_SIMPLENET

SIZES = [(512, 512), (300, 700), (701, 333), (331, 330), (100, 90)]


def _torchvision(inpt: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    return F.center_crop(F.resize(inpt, [resize], antialias=True), [crop, crop])


def test_official_geometry_numbers() -> None:
    """900 × 1200 → shorter side 329: 329 × 438, crop 288 from row 20 and column 75 (torchvision's rounding)."""
    assert crop_geometry(900, 1200, 329, (288, 288)) == ((329, 438), (20, 75))
    assert crop_geometry(288, 288, 329, (288, 288)) == ((288, 288), (0, 0))  # already cropped: unchanged
    assert crop_geometry(41 + 288, 329, 329, (288, 288))[1] == (20, 20)  # 20.5 rounds to even, as Python's round


@pytest.mark.parametrize("size", SIZES)
def test_images_and_masks_match_torchvision_resize_then_crop(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, *size, generator=generator))
    mask = tv_tensors.Mask((torch.rand(*size, generator=generator) > 0.7).to(torch.uint8))
    out_image, out_mask = ResizeCenterCrop(288, 329)(image, mask)
    assert out_image.shape == (3, 288, 288) and isinstance(out_image, tv_tensors.Image)
    expected = _torchvision(image.as_subclass(torch.Tensor), 329, 288)
    torch.testing.assert_close(out_image.as_subclass(torch.Tensor), expected, atol=1e-5, rtol=0)
    assert out_mask.dtype == torch.uint8 and torch.equal(out_mask, _torchvision(mask, 329, 288))  # nearest


def test_idempotent_on_already_cropped_input_and_bad_arguments() -> None:
    """anomalib's datamodule crops dataset images with the model's ``Resize``, then the pre-processor applies the
    transform again to the batch: the second application must not zoom in again."""
    transform = ResizeCenterCrop(288, 329)
    image = torch.rand(2, 3, 600, 800)
    once = transform(image)
    torch.testing.assert_close(transform(once), once)
    with pytest.raises(ValueError, match="resize"):
        ResizeCenterCrop(288, 256)
    with pytest.raises(ValueError, match="crop"):
        ResizeCenterCrop((288,), 329)


def test_checkpoint_spec_is_plain_anomalib_and_round_trips() -> None:
    pre_processor = CenterCropPreProcessor(288, 329)
    spec = pre_processor.checkpoint_config()["transform"]["init_args"]["transforms"]
    assert [step["class_path"].rsplit(".", 1)[-1] for step in spec] == ["Resize", "CenterCrop", "Normalize"]
    restored = imagenet_pre_processor(64)
    restored.load_checkpoint_config(pre_processor.checkpoint_config())
    crop = restored.transform.transforms[0]
    assert isinstance(crop, ResizeCenterCrop) and (crop.resize, crop.size) == (329, [288, 288])
    assert isinstance(restored.export_transform.transforms[0], ResizeCenterCrop)


def test_variable_size_data_gives_fixed_size_batches_and_masks(magnetic_tile_subset: Path, tmp_path: Path) -> None:
    """magnetic_tile's images differ in size: the datamodule crops them (and their masks) before collating, and
    predictions and masks come out with the crop's size, so pixel metrics compare the same pixels."""
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET, pre_processor=CenterCropPreProcessor(64, 73), visualizer=False)
    datamodule = lab_data.datamodule(magnetic_tile_subset, "magnetic_tile", batch_size=8)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                    accelerator="cpu")  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    assert "pixel_AUROC" in engine.test(model, datamodule=datamodule, verbose=False)[0]
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[-2:] == batch.gt_mask.shape[-2:] == (64, 64)
    assert batch.gt_mask.any()  # the crop kept the defects of this subset's first test batch


@pytest.mark.slow
def test_exported_crop_matches_torch_on_any_size(tmp_path: Path) -> None:
    """One dynamic-size ONNX graph → OpenVINO; equal to torch for large, non-square, odd, small and already
    cropped inputs."""
    import openvino as ov

    pre_processor = CenterCropPreProcessor(64, 73).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    path = tmp_path / "pre_processor.onnx"
    torch.onnx.export(pre_processor, (torch.zeros(2, 3, 100, 120),), str(path), dynamo=True, dynamic_shapes=(dims,))
    compiled = ov.Core().compile_model(ov.convert_model(path), "CPU", FP32_CPU_CONFIG)
    for size in [*SIZES, (64, 64), (20, 30)]:
        images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
        result = np.asarray(compiled(images.numpy())[0])
        assert result.shape == (1, 3, 64, 64)
        assert np.abs(result - pre_processor.transform(images).numpy()).max() < 1e-4, size


@pytest.mark.slow
def test_exported_simplenet_with_the_crop_matches_torch(synthetic_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Engine.export`` keeps the crop in the graph: OpenVINO FP32 scores and maps equal the torch model's for a
    square, a non-square and an already-cropped input."""
    from anomalib.deploy import ExportType, OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes openvino_cache/ into the working directory
    torch.manual_seed(0)
    model = SimpleNet(**TINY_SIMPLENET, noise_std=0.015, pre_processor=CenterCropPreProcessor(64, 73),
                      visualizer=False)  # fmt: skip
    datamodule = lab_data.datamodule(synthetic_root, "synthetic")
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", logger=False,
                    enable_progress_bar=False)  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    onnx = engine.export(model, ExportType.ONNX, export_root=tmp_path)
    inferencer = OpenVINOInferencer(path=onnx, device="CPU", config=FP32_CPU_CONFIG)
    model.eval()
    for size in [(300, 300), (333, 517), (64, 64)]:
        image = torch.nn.functional.interpolate(torch.rand(1, 3, 32, 40), size=size, mode="bilinear")
        result = inferencer.predict(image[0])
        with torch.no_grad():
            expected = model(image)
        actual_map = torch.as_tensor(np.asarray(result.anomaly_map)).reshape(expected.anomaly_map.shape)
        assert expected.anomaly_map.shape[-2:] == (64, 64)
        assert abs(float(result.pred_score.squeeze()) - expected.pred_score.item()) < 1e-3, size
        assert (actual_map - expected.anomaly_map).abs().max().item() < 1e-3, size
