"""Unit tests of DistillClassifier's networks, tasks, losses, scoring and arguments (no Engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from PIL import Image
from torchvision.models.resnet import BasicBlock

from anomalib_simplenet import DistillClassifier
from anomalib_simplenet.models.distill_classifier.fitting import holdout_mask
from anomalib_simplenet.models.distill_classifier.loss import FeatureDistillationLoss, SoftLabelDistillationLoss
from anomalib_simplenet.models.distill_classifier.networks import Student, stage_grid
from anomalib_simplenet.models.distill_classifier.tasks import (
    TRANSFORMS,
    apply_transforms,
    category_labels,
    fixed_transform_labels,
    random_transform_labels,
)
from anomalib_simplenet.models.distill_classifier.teacher import Teacher
from anomalib_simplenet.models.distill_classifier.torch_model import DistillClassifierModel

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _load(path: Path) -> torch.Tensor:
    """PNG → normalised ``(3, H, W)`` tensor (as the default pre-processor does)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD


# ------------------------------------------------------------------------------------------------ student
def test_student_has_resnet18_structure_up_to_conv3_x() -> None:
    student = Student(num_classes=5)
    conv, bn, relu, pool = student.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (3, 64, (7, 7), (2, 2))
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert isinstance(pool, torch.nn.MaxPool2d) and pool.stride == 2
    assert [type(b) for b in student.conv2_x] == [BasicBlock, BasicBlock]
    assert [type(b) for b in student.conv3_x] == [BasicBlock, BasicBlock]
    assert [b.conv1.out_channels for b in student.conv2_x] == [64, 64]
    assert [b.conv1.out_channels for b in student.conv3_x] == [128, 128]
    assert student.conv2_x[0].conv1.stride == (1, 1) and student.conv3_x[0].conv1.stride == (2, 2)
    assert (student.fc.in_features, student.fc.out_features) == (128, 5)
    assert not hasattr(student, "layer4") and not hasattr(student, "conv4_x")


@pytest.mark.parametrize(("height", "width"), [(64, 64), (70, 100)])
def test_student_output_shapes_and_strides(height: int, width: int) -> None:
    student = Student(num_classes=3).eval()
    features, logits = student(torch.randn(2, 3, height, width))
    assert features.conv2_x.shape == (2, 64, *stage_grid((height, width), "conv2_x"))
    assert features.conv3_x.shape == (2, 128, *stage_grid((height, width), "conv3_x"))
    assert stage_grid((64, 64), "conv2_x") == (16, 16) and stage_grid((64, 64), "conv3_x") == (8, 8)
    torch.testing.assert_close(features.embedding, features.conv3_x.mean(dim=(2, 3)))
    assert logits.shape == (2, 3)


def test_torch_model_modes_and_image_embedding() -> None:
    model = DistillClassifierModel(image_size=64, num_classes=8)
    model.train()
    output = model(torch.randn(3, 3, 64, 64))
    assert output.logits.shape == (3, 8)
    model.eval()
    prediction = model(torch.randn(3, 3, 64, 64))
    assert isinstance(prediction, InferenceBatch)
    assert prediction.pred_score.shape == (3,)
    assert prediction.anomaly_map.shape == (3, 1, 64, 64)
    assert model.image_embedding(torch.randn(4, 3, 64, 64)).shape == (4, 128)
    with pytest.raises(ValueError, match="image_size"):
        model(torch.randn(1, 3, 96, 96))


# ------------------------------------------------------------------------------------------------ teacher
def test_teacher_is_frozen_and_matches_student_shapes() -> None:
    teacher = Teacher(pre_trained=False, num_classes=4)
    assert not any(p.requires_grad for p in teacher.backbone.parameters())
    assert all(p.requires_grad for p in teacher.head.parameters())
    teacher.train()
    assert not teacher.backbone.training, "frozen backbone must stay in eval mode"
    before = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    (maps, logits) = teacher(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in teacher.backbone.state_dict().items())
    student_features = Student(4)(torch.randn(2, 3, 64, 64)).features
    assert [m.shape for m in maps] == [student_features.conv2_x.shape, student_features.conv3_x.shape]
    assert logits.shape == (2, 4)
    assert not maps[0].requires_grad
    # A random teacher is the same on every run (fixed seed), so resumed runs distil the same targets.
    again = Teacher(pre_trained=False)
    first, second = teacher.backbone.state_dict(), again.backbone.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_teacher_of_another_backbone_is_projected_and_resampled_to_the_student() -> None:
    # lite0 (random weights: shapes only) at stride 4 (24 ch) and, overridden, stride 16 (112 ch).
    teacher = Teacher(pre_trained=False, backbone="efficientnet_lite0", layers=["blocks.1", "blocks.4"], num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    maps, logits = teacher(images)
    assert [m.shape[1:] for m in maps] == [(24, 16, 16), (112, 4, 4)] and logits.shape == (2, 3)
    features = Student(3)(images).features
    targets, projected = teacher.align(maps, [features.conv2_x, features.conv3_x])
    assert [t.shape for t in targets] == [(2, 24, 16, 16), (2, 112, 8, 8)]  # teacher maps on the student's grids
    assert [p.shape for p in projected] == [t.shape for t in targets]
    assert projected[0].requires_grad and not targets[1].requires_grad
    assert set(teacher.trainable_state()) == {
        "projections.0.weight", "projections.0.bias", "projections.1.weight", "projections.1.bias",
        "head.weight", "head.bias",
    }
    assert Teacher(pre_trained=False, backbone="efficientnet_lite0").layers == ["blocks.1", "blocks.2"]


def test_teacher_weights_file_is_loaded(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(source.conv1.weight, 0.01)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    teacher = Teacher(pre_trained=False, weights_path=tmp_path / "resnet18.pth")
    assert torch.all(teacher.backbone.conv1.weight == 0.01)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Teacher(weights_path=tmp_path / "missing.pth")


def test_teacher_only_exists_in_distill_fit_and_never_in_the_model() -> None:
    model = DistillClassifier(mode="distill", pre_trained=False, image_size=64, categories=["a", "b"])
    assert model.teacher is None
    model.setup("fit")  # categories given: no trainer needed
    assert isinstance(model.teacher, Teacher)
    assert model.teacher.head is not None  # soft labels on by default with several categories
    assert not any("teacher" in key for key in model.state_dict())
    assert all(p.data_ptr() not in {q.data_ptr() for q in model.parameters()} for p in model.teacher.parameters())
    model.on_fit_end()
    assert model.teacher is None
    scratch = DistillClassifier(mode="scratch", image_size=64, categories=["a", "b"])
    scratch.setup("fit")
    assert scratch.teacher is None


# --------------------------------------------------------------------------------------------------- tasks
def test_transform_labels_are_the_eight_dihedral_transforms() -> None:
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    images = image.repeat(8, 1, 1, 1)
    transformed = apply_transforms(images, torch.arange(8))
    expected = [torch.rot90(image.flip(-1) if flip else image, turns, dims=(-2, -1)) for turns, flip in TRANSFORMS]
    torch.testing.assert_close(transformed, torch.cat(expected))
    assert len({tuple(t.flatten().tolist()) for t in transformed}) == 8, "all 8 transforms must differ"
    torch.testing.assert_close(transformed[0], image[0])  # label 0 = identity
    # Labels are applied per image, in any order.
    shuffled = torch.tensor([5, 0, 7])
    torch.testing.assert_close(apply_transforms(images[:3], shuffled), transformed[shuffled])


def test_transform_label_draws() -> None:
    assert fixed_transform_labels(10, 4).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    torch.manual_seed(0)
    drawn = random_transform_labels(4000, 8)
    assert drawn.min() == 0 and drawn.max() == 7
    assert drawn.bincount().float().std() / 500 < 0.1  # roughly uniform


def test_non_square_images_need_shape_preserving_transforms() -> None:
    images = torch.randn(4, 3, 8, 12)
    assert apply_transforms(images, torch.arange(4)).shape == images.shape  # first 4 keep the shape
    with pytest.raises(ValueError, match="num_transforms <= 4"):
        apply_transforms(images, torch.tensor([4]))


def test_category_labels_from_paths() -> None:
    paths = ["/d/a/train/good/0.png", "/d/b/test/crack/1.png", "/d/a/test/good/2.png"]
    assert category_labels(paths, ["a", "b"]).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="none of the category folders"):
        category_labels(["/d/c/train/good/0.png"], ["a", "b"])


def test_scratch_objective_classifies_transforms_on_one_category() -> None:
    model = DistillClassifier(mode="scratch", image_size=32, num_transforms=4)
    assert model.model.student.fc.out_features == 4
    losses = model.objective(torch.randn(6, 3, 32, 32), ["x.png"] * 6)
    assert set(losses) == {"loss", "classification"}
    assert losses["loss"].item() == pytest.approx(losses["classification"].item())
    assert 0.3 * np.log(4) < losses["loss"].item() < 3 * np.log(4)  # about log(K) at initialisation


# -------------------------------------------------------------------------------------------------- losses
def test_feature_distillation_loss_values() -> None:
    loss = FeatureDistillationLoss()
    teacher = torch.randn(2, 8, 4, 4)
    assert loss([teacher], [teacher]).item() == pytest.approx(0.0, abs=1e-6)
    assert loss([teacher], [3 * teacher]).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant (normalised)
    assert loss([teacher], [-teacher]).item() == pytest.approx(2.0, abs=1e-5)  # opposite: ½·‖2t̂‖² = 2
    # orthogonal: channel-one-hot vectors on different channels → ½·2 = 1 per location; two stages sum.
    first, second = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    first[:, 0], second[:, 1] = 1.0, 5.0
    assert loss([first, first], [second, second]).item() == pytest.approx(2.0)
    per_location = loss.location_loss(teacher, -teacher)
    assert per_location.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        loss([teacher], [teacher[:, :4]])


def test_soft_label_loss_values_and_teacher_detached() -> None:
    loss = SoftLabelDistillationLoss(temperature=2.0)
    logits = torch.randn(5, 4)
    assert loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(5, 4, requires_grad=True)
    student = torch.randn(5, 4, requires_grad=True)
    p_teacher = F.softmax(teacher.detach() / 2, dim=1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student.detach() / 2, dim=1))).sum(1).mean() * 4
    value = loss(teacher, student)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="temperature"):
        SoftLabelDistillationLoss(temperature=0)


def test_distill_objective_terms() -> None:
    torch.manual_seed(0)
    model = DistillClassifier(mode="distill", pre_trained=False, image_size=32, categories=["a", "b"])
    model.setup("fit")
    images = torch.randn(4, 3, 32, 32)
    paths = ["/r/a/train/good/0.png", "/r/b/train/good/0.png", "/r/a/train/good/1.png", "/r/b/train/good/1.png"]
    losses = model.objective(images, paths)
    assert set(losses) == {"loss", "feature", "soft_label", "teacher_head"}
    assert losses["loss"].item() == pytest.approx(losses["feature"].item() + losses["soft_label"].item(), rel=1e-5)
    # The feature loss is STPM's on the teacher's and student's conv2_x/conv3_x maps.
    teacher_maps, _ = model.teacher(images)
    features = model.model.student(images).features
    expected = FeatureDistillationLoss()(teacher_maps, [features.conv2_x, features.conv3_x])
    assert losses["feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    (losses["loss"] + losses["teacher_head"]).backward()
    assert all(p.grad is None for p in model.teacher.backbone.parameters())
    assert model.teacher.head.weight.grad is not None and model.model.student.fc.weight.grad is not None


def test_single_category_distillation_is_pure_feature_matching_by_default() -> None:
    model = DistillClassifier(mode="distill", pre_trained=False, image_size=32)
    model.setup("fit")
    assert model.loss_weights == {"feature": 1.0, "classification": 0.0, "soft_label": 0.0}
    assert model.teacher.head is None
    assert set(model.objective(torch.randn(2, 3, 32, 32), ["x.png"] * 2)) == {"loss", "feature"}


# ------------------------------------------------------------------------------------------------- scoring
def _defect_images(category: Path, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted((category / "test" / kind).glob("*.png"))
    masks = [np.asarray(Image.open(category / "ground_truth" / kind / f"{p.stem}_mask.png")) > 0 for p in paths]
    return torch.stack([_load(p) for p in paths]), torch.from_numpy(np.stack(masks))


def test_mahalanobis_scoring_ranks_synthetic_defects_higher(synthetic_root: Path) -> None:
    """Gaussians on normal images only; even a random student's features then separate defects."""
    torch.manual_seed(0)
    category = synthetic_root / "synthetic"
    train = torch.stack([_load(p) for p in sorted((category / "train" / "good").glob("*.png"))])
    good = torch.stack([_load(p) for p in sorted((category / "test" / "good").glob("*.png"))])
    model = DistillClassifierModel(image_size=64, num_classes=8).eval()
    features = model.student.features(train)
    index = torch.zeros(len(train), dtype=torch.long)
    fit_mask = holdout_mask([str(i) for i in range(len(train))], index, 0.25)
    model.fit(features, index, fit_mask, percentile=100)
    assert model.is_fitted
    with torch.no_grad():
        normal = model(good)
        # The same images with a large dark square: image scores go up, the map peaks in the square.
        damaged = good.clone()
        damaged[:, :, 20:44, 20:44] = good.min()
        square = model(damaged)
        assert (square.pred_score > normal.pred_score).float().mean() >= 5 / 6
        inside = square.anomaly_map[:, 0, 20:44, 20:44].mean(dim=(1, 2))
        outside = square.anomaly_map[:, 0, :12, :].mean(dim=(1, 2))
        assert torch.all(inside > 1.5 * outside)
        # The generator's own defects: thin scratches change the pooled embedding enough for the image score;
        # blobs and scratches are both localised by the per-location distances.
        scratches, _ = _defect_images(category, "scratch")
        assert model(scratches).pred_score.mean() > normal.pred_score.max()
        for kind in ("blob", "scratch"):
            images, masks = _defect_images(category, kind)
            maps = model(images).anomaly_map[:, 0]
            hits = [maps[i][masks[i]].mean() > maps[i][~masks[i]].mean() for i in range(len(images))]
            assert sum(hits) >= 0.8 * len(hits), kind
    # percentile=100 → the threshold is the largest held-out score.
    held_out_scores = model.image_scores(features.embedding[~fit_mask])[0]
    assert model.percentile_threshold.item() == pytest.approx(held_out_scores.max().item(), rel=1e-5)


def test_map_max_image_score_and_its_percentile_threshold() -> None:
    torch.manual_seed(0)
    model = DistillClassifierModel(image_size=32, image_score="map_max").eval()
    images = torch.randn(12, 3, 32, 32)
    features = model.student.features(images)
    fit_mask = torch.tensor([True] * 10 + [False] * 2)
    model.fit(features, torch.zeros(12, dtype=torch.long), fit_mask, percentile=100)
    with torch.no_grad():
        output = model(images)
    torch.testing.assert_close(output.pred_score, output.anomaly_map.flatten(1).amax(dim=1))
    # The threshold is in the same units as the scores: the larger held-out map maximum.
    assert model.percentile_threshold.item() == pytest.approx(output.pred_score[10:].max().item(), rel=1e-5)


def test_grid_geometry_is_measured_at_the_first_fit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = DistillClassifierModel(image_size=32).eval()
    initial = model.grid_geometry.clone()
    features = model.student.features(torch.randn(6, 3, 32, 32))
    fit = (features, torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.bool), 99)
    model.fit(*fit)
    measured = model.grid_geometry.clone()
    assert not torch.equal(measured, initial)
    torch.testing.assert_close(measured, model.measure_grid_geometry())
    monkeypatch.setattr(model, "measure_grid_geometry", lambda: pytest.fail("geometry measured again"))
    model.fit(*fit)
    torch.testing.assert_close(model.grid_geometry, measured)
    reloaded = DistillClassifierModel(image_size=32)
    reloaded.load_state_dict(model.state_dict())  # checkpoints carry the measurement
    torch.testing.assert_close(reloaded.grid_geometry, measured)
    monkeypatch.setattr(reloaded, "measure_grid_geometry", lambda: pytest.fail("a loaded geometry measured again"))
    reloaded.fit(*fit)
    torch.testing.assert_close(reloaded.grid_geometry, measured)


def test_several_categories_are_scored_against_the_nearest_gaussian() -> None:
    torch.manual_seed(0)
    model = DistillClassifierModel(image_size=32, num_classes=2, categories=["dark", "bright"]).eval()
    dark, bright = torch.randn(12, 3, 32, 32) * 0.3 - 1.5, torch.randn(12, 3, 32, 32) * 0.3 + 1.5
    features = model.student.features(torch.cat([dark[:10], bright[:10]]))
    index = torch.tensor([0] * 10 + [1] * 10)
    model.fit(features, index, torch.ones(20, dtype=torch.bool), percentile=99)
    assert torch.isnan(model.percentile_threshold)  # nothing held out
    with torch.no_grad():
        _, nearest = model.image_scores(model.student.features(torch.cat([dark[10:], bright[10:]])).embedding)
        output = model(torch.cat([dark[10:], bright[10:]]))
    assert nearest.tolist() == [0, 0, 1, 1]
    assert output.anomaly_map.shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="'bright' has 0 normal training images"):
        model.fit(features, torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.bool), percentile=99)


def test_holdout_mask_is_per_category_deterministic_and_order_free() -> None:
    paths = [f"/r/{c}/train/good/{i:03d}.png" for c in "ab" for i in range(20)]
    index = torch.tensor([0] * 20 + [1] * 20)
    fit = holdout_mask(paths, index, 0.1)
    assert (~fit[:20]).sum() == 2 and (~fit[20:]).sum() == 2
    order = torch.randperm(40)
    refit = holdout_mask([paths[i] for i in order], index[order], 0.1)
    assert torch.equal(refit, fit[order])
    assert holdout_mask(paths[:3], index[:3], 0.01).sum() == 2  # at least one held out, two kept
    assert holdout_mask(paths[:2], index[:2], 0.5).all()  # never below two to fit on
    assert holdout_mask(paths, index, 0.0).all()
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_mask(paths, index, 1.0)


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "teacher"}, "mode must be one of"),
        ({"mode": "scratch", "soft_label_weight": 1.0}, "soft_label_weight needs a teacher"),
        ({"mode": "scratch", "classification_weight": 0.0}, "classification_weight must be > 0"),
        ({"feature_weight": -1.0}, "feature_weight must be >= 0"),
        ({"num_transforms": 9}, "num_transforms"),
        ({"map_layers": ["conv4_x"]}, "map_layers"),
        ({"threshold_percentile": 0}, "threshold_percentile"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"threshold_mode": "otsu"}, "threshold_mode"),
        ({"image_score": "mean"}, "image_score"),
        ({"image_size": (64,)}, "image_size"),
        ({"categories": ["a", "a"]}, "categories"),
        ({"learning_rate": 0}, "learning_rate"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistillClassifier(pre_trained=False, **kwargs)


def test_all_zero_weights_fail_at_fit_setup() -> None:
    model = DistillClassifier(mode="distill", pre_trained=False, feature_weight=0.0, image_size=32)
    with pytest.raises(ValueError, match="nothing would be trained"):
        model.setup("fit")


def test_offline_imagenet_teacher_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = DistillClassifier(mode="distill", pre_trained=True, image_size=32)  # constructing needs no weights
    from anomalib_simplenet.components.backbone import BackboneWeightsError, _cached_hub_file

    if _cached_hub_file("resnet18") is not None:
        pytest.skip("ImageNet resnet18 weights are cached on this machine")
    with pytest.raises(BackboneWeightsError, match="teacher_weights"):
        model.setup("fit")


def test_registered_with_anomalib_as_direct_anomalib_module_subclass() -> None:
    from anomalib import LearningType
    from anomalib.models import AnomalibModule, get_model

    model = get_model("distillclassifier", mode="scratch", image_size=64)
    assert type(model) is DistillClassifier
    assert AnomalibModule in DistillClassifier.__bases__
    assert model.learning_type == LearningType.ONE_CLASS
    assert model.trainer_arguments["num_sanity_val_steps"] == 0
