"""Backbone weights: local files, the hub cache path, and fast, clear offline failure."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from anomalib_simplenet.components import backbone as backbone_module
from anomalib_simplenet.components.backbone import BackboneWeightsError, create_feature_extractor

LAYERS = ["layer2", "layer3"]


def _reference_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def _assert_loaded(extractor: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = extractor.state_dict()
    assert loaded, "extractor has no weights"
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=f"weight {key} was not loaded")


def test_torchvision_pth_file_loads(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(2)
    state = torchvision.models.resnet18(weights=None).state_dict()  # torchvision naming
    path = tmp_path / "resnet18_tv.pth"
    torch.save(state, path)
    _assert_loaded(create_feature_extractor("resnet18", LAYERS, pre_trained=False, weights_path=path), state)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_timm_state_dict_files_load(tmp_path: Path, suffix: str) -> None:
    state = _reference_state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    _assert_loaded(create_feature_extractor("resnet18", LAYERS, weights_path=path), state)


def test_mismatched_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneWeightsError, match=r"resnet34.pth does not fit backbone .resnet18..*unexpected keys"):
        create_feature_extractor("resnet18", LAYERS, weights_path=path)


def test_missing_or_wrong_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_feature_extractor("resnet18", LAYERS, weights_path=tmp_path / "nope.pth")
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match="weights.txt"):
        create_feature_extractor("resnet18", LAYERS, weights_path=text)


def test_unknown_layer_names_the_layer() -> None:
    with pytest.raises(ValueError, match="layer9"):
        create_feature_extractor("resnet18", ["layer2", "layer9"], pre_trained=False)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pretrained_without_network_fails_fast_and_says_what_to_do(
    empty_hub_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    del empty_hub_cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens: connection refused
    start = time.monotonic()
    with pytest.raises(BackboneWeightsError, match=r"unreachable.*backbone_weights=.*pre_trained=False"):
        create_feature_extractor("resnet18", LAYERS, pre_trained=True)
    assert time.monotonic() - start < 10


def test_pretrained_uses_the_hub_cache_offline(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ImageNet path: weights already in the hub cache load without network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    snapshot = empty_hub_cache / f"models--{hub_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    state = _reference_state_dict(seed=3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    assert backbone_module._cached_hub_file("resnet18") == str(snapshot / "model.safetensors")
    _assert_loaded(create_feature_extractor("resnet18", LAYERS, pre_trained=True), state)


def test_tagged_name_selects_its_own_weights(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wide_resnet50_2.tv_in1k`` (torchvision's weights, the official SimpleNet's) is looked up in its own hub
    repository, not in that of the plain name (timm's racm_in1k), and has the plain name's layers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tagged = "wide_resnet50_2.tv_in1k"
    snapshot = empty_hub_cache / "models--timm--wide_resnet50_2.tv_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    (snapshot / "model.safetensors").write_bytes(b"")  # only its path is checked here
    assert backbone_module._cached_hub_file(tagged) == str(snapshot / "model.safetensors")
    assert backbone_module._cached_hub_file("wide_resnet50_2") is None  # racm_in1k: another repository
    assert backbone_module.default_layers(tagged) == ["layer2", "layer3"]
    assert backbone_module.layer_channels(tagged, ["layer2", "layer3"]) == [512, 1024]
