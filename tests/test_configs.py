"""Every file in configs/ parses with anomalib's CLI (train/fit/test), and each model's config trains a tiny run."""

from __future__ import annotations

import csv
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.cli import AnomalibCLI
from jsonargparse import ArgumentParser, Namespace

from .conftest import REPO_ROOT, SHARED_DATA

CONFIGS = REPO_ROOT / "configs"
BASES = {"simplenet": "SimpleNet", "distill_classifier": "DistillClassifier", "unet_ae": "UNetAE"}
# Overlay file → (base config, init_args it must set). Every YAML in configs/ must be listed here or in BASES.
OVERLAYS = {
    "simplenet_noise0.008": ("simplenet", {"noise_std": 0.008}),
    "simplenet_noise0.015": ("simplenet", {"noise_std": 0.015}),
    "simplenet_noise0.03": ("simplenet", {"noise_std": 0.03}),
    "simplenet_adapter2": ("simplenet", {"adapter_layers": 2}),
    "simplenet_official": ("simplenet", {
        "backbone": "wide_resnet50_2.tv_in1k", "layers": ["layer2", "layer3"], "pretrain_embed_dim": 1536,
        "target_embed_dim": 1536, "discriminator_hidden": 1024, "noise_std": 0.015, "image_size": 288,
        "grid_alignment": False, "location_gaussian": False,
        "pre_processor": {"class_path": "anomalib_simplenet.components.pre_processing.CenterCropPreProcessor",
                          "init_args": {"image_size": 288, "resize_shorter_side": 329}},
    }),
    "distill_classifier_scratch": (
        "distill_classifier", {"mode": "scratch", "pre_trained": False, "classification_weight": None},
    ),
    "distill_classifier_lr3e-4": ("distill_classifier", {"learning_rate": 3e-4}),
    "distill_classifier_lr1e-3": ("distill_classifier", {"learning_rate": 1e-3}),
    "distill_classifier_lr3e-3": ("distill_classifier", {"learning_rate": 3e-3}),
    "distill_classifier_cls0.5": ("distill_classifier", {"classification_weight": 0.5, "feature_weight": 1.0}),
    "simplenet_offline": ("simplenet", {
        "backbone": "efficientnet_lite0", "layers": ["blocks.2", "blocks.4"], "pretrain_embed_dim": 152,
        "target_embed_dim": 152, "pre_trained": True,
    }),
    "distill_classifier_offline": (
        "distill_classifier", {"teacher_backbone": "efficientnet_lite0", "teacher_layers": None, "pre_trained": True},
    ),
    "unet_ae_latent64": ("unet_ae", {"latent_dim": 64}),
    "unet_ae_latent128": ("unet_ae", {"latent_dim": 128}),
    "unet_ae_latent256": ("unet_ae", {"latent_dim": 256}),
}
DATA = {"data/magnetic_tile": "magnetic_tile", "data/mvtec": "bottle"}
LOGGERS = {"logger/tensorboard": "TensorBoardLogger", "logger/wandb": "WandbLogger"}
TINY = {
    "simplenet": ["--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.image_size", "64",
                  "--model.pretrain_embed_dim", "128", "--model.target_embed_dim", "128",
                  "--model.discriminator_hidden", "64"],
    "distill_classifier": ["--model.pre_trained", "false", "--model.image_size", "64"],
    "unet_ae": ["--model.image_size", "64", "--model.depth", "3", "--model.base_channels", "8"],
}  # fmt: skip
# Offline overlays train with the packaged ImageNet weights (no pre_trained=false).
TINY_OFFLINE = {"distill_classifier": ["--model.image_size", "64"]}


def _approx(expected: dict) -> dict:
    """``expected`` with floats compared approximately (pytest.approx itself rejects the list values)."""
    return {key: pytest.approx(value) if isinstance(value, float) else value for key, value in expected.items()}


def _path(name: str) -> str:
    return str(CONFIGS / f"{name}.yaml")


def _config_args(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", _path(name))]


def _data_args(root: Path) -> list[str]:
    return ["--data.root", str(root), "--data.category", "synthetic", "--data.num_workers", "0",
            "--data.train_batch_size", "8", "--data.eval_batch_size", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def parser() -> ArgumentParser:
    """anomalib's full CLI parser, built once (building it costs seconds; parsing ~1 s)."""
    return AnomalibCLI(["train", "--config", _path("unet_ae"), *TINY["unet_ae"]], run=False).parser


def _parse(parser: ArgumentParser, subcommand: str, *args: str) -> Namespace:
    return parser.parse_args([subcommand, *args])[subcommand]


def _class_names(entries: object) -> list[str]:
    entries = entries if isinstance(entries, list) else [entries]
    return [e.class_path.rsplit(".", 1)[-1] for e in entries if isinstance(e, Namespace)]


def test_every_config_file_is_checked() -> None:
    # configs/study*.yaml name the study's settings, not CLI configs: tests/test_study.py builds every one of them.
    found = {str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml")
             if not p.name.startswith("study")}
    assert found == set(BASES) | set(OVERLAYS) | set(DATA) | set(LOGGERS)


# fit/test for one config suffice: the three model configs have the same sections.
@pytest.mark.parametrize(
    ("subcommand", "base"), [*(("train", base) for base in sorted(BASES)), ("fit", "unet_ae"), ("test", "unet_ae")],
)
def test_model_config_parses(parser: ArgumentParser, subcommand: str, base: str) -> None:
    """Runnable as ``anomalib <train|fit|test> --config configs/<base>.yaml``."""
    config = _parse(parser, subcommand, *_config_args(base))
    assert config.model.class_path.endswith(BASES[base])
    data = config.data.init_args
    assert (data.category, data.val_split_mode, data.seed) == ("magnetic_tile", "from_test", 42)
    assert str(data.root) == "../shared/data"
    callbacks = {c.class_path.rsplit(".", 1)[-1].replace("OnceMoved", ""): c.init_args
                 for c in config.trainer.callbacks}  # fmt: skip
    assert callbacks["EarlyStopping"].monitor == callbacks["ModelCheckpoint"].monitor == "val_loss"
    assert callbacks["EarlyStopping"].mode == callbacks["ModelCheckpoint"].mode == "min"
    assert config.trainer.callbacks[1].class_path == "anomalib.callbacks.ModelCheckpoint"  # replaces the Engine's
    assert _class_names(config.trainer.logger) == ["CSVLogger"]
    assert config.seed_everything == 42


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_sets_valid_hyper_parameters(overlay: str) -> None:
    """Each overlay sets exactly its settings, under names the model's constructor has (parsing them is below)."""
    import anomalib_simplenet

    base, expected = OVERLAYS[overlay]
    init_args = yaml.safe_load(Path(_path(overlay)).read_text())["model"]["init_args"]
    assert init_args == _approx(expected)
    model = getattr(anomalib_simplenet, BASES[base])
    assert set(init_args) <= set(inspect.signature(model.__init__).parameters)


@pytest.mark.parametrize("base", sorted(BASES))
def test_overlays_parse_on_their_base(parser: ArgumentParser, base: str) -> None:
    """All overlays of a base through the CLI at once (one parse per base: each costs ~1 s); the last one wins."""
    overlays = sorted(name for name, (of, _) in OVERLAYS.items() if of == base)
    config = _parse(parser, "train", *_config_args(base, *overlays))
    assert config.model.class_path.endswith(BASES[base])
    last = OVERLAYS[overlays[-1]][1]
    assert {k: config.model.init_args[k] for k in last} == _approx(last)
    # EarlyStopping and ModelCheckpoint first; simplenet_official replaces them by the checkpoint alone.
    leading = config.trainer.callbacks[: 1 if base == "simplenet" else 2]
    assert [c.init_args.monitor for c in leading] == ["val_loss"] * len(leading)


@pytest.mark.parametrize("data", sorted(DATA))
def test_data_config_replaces_the_default_data(parser: ArgumentParser, data: str) -> None:
    config = _parse(parser, "train", *_config_args("simplenet"), "--data", _path(data))
    init_args = config.data.init_args
    assert init_args.category == DATA[data]
    assert init_args.val_split_mode == "from_test" and isinstance(init_args.seed, int)


def test_magnetic_tile_root_is_the_shared_data_from_the_repository_root() -> None:
    if not (SHARED_DATA / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    assert (REPO_ROOT / "../shared/data/magnetic_tile/train/good").resolve().is_dir()


@pytest.mark.parametrize("overlay", sorted(LOGGERS))
def test_logger_overlay_parses(parser: ArgumentParser, overlay: str) -> None:
    config = _parse(parser, "train", *_config_args("unet_ae", overlay))
    assert _class_names(config.trainer.logger) == ["CSVLogger", LOGGERS[overlay]]


def _train(args: list[str]) -> AnomalibCLI:
    common = ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    return AnomalibCLI(["train", *args, *common])


def _logged_columns(root: Path) -> set[str]:
    (metrics,) = root.glob("results/logs/*/version_0/metrics.csv")
    with metrics.open() as file:
        return set(csv.DictReader(file).fieldnames or [])


@pytest.mark.parametrize(
    ("base", "overlays"),
    [("simplenet", ["simplenet_noise0.03"]), ("distill_classifier", ["distill_classifier_lr3e-3"]),
     ("distill_classifier", ["distill_classifier_scratch"]),
     ("distill_classifier", ["distill_classifier_offline"])],
    ids=["simplenet", "distill", "scratch", "distill_offline"],
)  # fmt: skip
def test_config_trains_a_tiny_run(
    base: str, overlays: list[str], synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``anomalib train --config ...`` with the config's own logger and callbacks (EarlyStopping, checkpoint)."""
    monkeypatch.chdir(tmp_path)  # the configs' relative results/ folders land here
    tiny = TINY_OFFLINE[base] if overlays[-1].endswith("_offline") else TINY[base]
    cli = _train([*_config_args(base, *overlays), *tiny, *_data_args(synthetic_root)])
    trainer = cli.engine.trainer
    assert {"image_AUROC", "pixel_AUROC"} <= set(trainer.callback_metrics)
    assert trainer.checkpoint_callback.monitor == "val_loss"
    assert Path(trainer.checkpoint_callback.best_model_path).is_file()
    assert {"val_loss", "epoch"} <= _logged_columns(tmp_path)
    assert {"train_loss", "train_loss_epoch"} & _logged_columns(tmp_path)


@pytest.mark.parametrize("module", ["tensorboard", "wandb"])
def test_optional_logger_trains(
    module: str, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TensorBoard / W&B (offline) overlays work when the user installed the package (skipped otherwise)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (optional: pip install {module})")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train([*_config_args("unet_ae", f"logger/{module}"), *TINY["unet_ae"], *_data_args(synthetic_root)])
    written = list((tmp_path / "results" / "logs").rglob("*"))
    if module == "wandb":
        assert any(p.name.startswith("offline-run-") for p in written), written
    else:
        assert any(p.name.startswith("events.out.tfevents") for p in written), written


def test_official_overlay_is_the_papers_setup(parser: ArgumentParser) -> None:
    """The authors' MVTec AD run: torchvision's WRN-50 weights (timm tag tv_in1k; the plain name is timm's own
    racm_in1k training), layer2 + layer3, 1536-d features, 1024-wide discriminator, absolute σ 0.015, shorter
    side 329 → centre crop 288 for images and masks, batch 8, 40 × 4 epochs validated every 4th, no early
    stopping. Checked without downloading the weights (the network is built with random ones)."""
    import timm
    from torchvision import tv_tensors

    from anomalib_simplenet import SimpleNet
    from anomalib_simplenet.components.backbone import default_layers
    from anomalib_simplenet.components.center_crop import ResizeCenterCrop

    config = _parse(parser, "train", *_config_args("simplenet", "simplenet_official"))
    cli = AnomalibCLI(["train", *_config_args("simplenet", "simplenet_official"), "--model.pre_trained", "false"],
                      run=False)  # fmt: skip
    init_args = config.model.init_args
    assert timm.models.get_pretrained_cfg(init_args.backbone).hf_hub_id == "timm/wide_resnet50_2.tv_in1k"
    assert timm.models.get_pretrained_cfg("wide_resnet50_2").hf_hub_id == "timm/wide_resnet50_2.racm_in1k"
    assert default_layers(init_args.backbone) == list(init_args.layers) == ["layer2", "layer3"]
    model = cli.model
    assert isinstance(model, SimpleNet) and model.model.noise_generator.sigma() == 0.015
    assert model.model.aggregator.out_channels == 1536 and model.model.discriminator[0].out_channels == 1024
    crop = model.pre_processor.transform.transforms[0]
    assert isinstance(crop, ResizeCenterCrop) and (crop.resize, crop.size) == (329, [288, 288])
    image, mask = crop(tv_tensors.Image(torch.rand(3, 600, 800)), tv_tensors.Mask(torch.ones(600, 800).bool()))
    assert image.shape[-2:] == mask.shape[-2:] == (288, 288)
    assert config.data.init_args.train_batch_size == 8
    assert (config.trainer.max_epochs, config.trainer.check_val_every_n_epoch) == (160, 4)
    assert _class_names(config.trainer.callbacks) == ["ModelCheckpoint"]  # no EarlyStopping
    assert config.trainer.callbacks[0].init_args.monitor == "val_loss"
