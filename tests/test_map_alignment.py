"""Anomaly maps land on the defect: disks on a texture, ImageNet EfficientNet-Lite0 features (packaged weights).

The mean signed offset (centroid of the hottest 1 % of each map minus the disk's centroid) must stay within
±3 px in x and y; with the grid correction switched off SimpleNet's maps sit about 10 px down-right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_simplenet import DistillClassifier, SimpleNet
from anomalib_simplenet.components.backbone import packaged_weights_file
from anomalib_simplenet.lab.map_offset import mean_map_offset

from .disk_defects import write_disk_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(packaged_weights_file("efficientnet_lite0") is None, reason="packaged lite0 weights missing"),
]
TOLERANCE_PX = 3.0


def _offset(model: object, root: Path, epochs: int, tmp_path: Path) -> tuple[float, float]:
    """Train on the ``disks`` textures, predict the disk images, return the mean offset ``(dx, dy)``."""
    datamodule = MVTecAD(root=root, category="disks", train_batch_size=8, eval_batch_size=8, num_workers=0,
                         val_split_mode="same_as_test", seed=0)  # fmt: skip
    engine = Engine(max_epochs=epochs, default_root_dir=tmp_path, accelerator="cpu", logger=False,
                    enable_progress_bar=False)  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    predictions = engine.predict(model, dataloaders=datamodule.test_dataloader())
    maps = torch.cat([batch.anomaly_map for batch in predictions])
    masks = torch.cat([batch.gt_mask for batch in predictions])
    return mean_map_offset(maps, masks)


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Disk datasets at 128 and 256 px (64 training textures, 16 disks from the borders to the middle)."""
    root = tmp_path_factory.mktemp("disks")
    return {size: write_disk_dataset(root / str(size), size, n_train=64).parent for size in (128, 256)}


@pytest.mark.parametrize("size", [128, 256])
def test_simplenet_maps_are_on_the_disks(size: int, disks: dict[int, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimpleNet(backbone="efficientnet_lite0", image_size=size, visualizer=False)
    dx, dy = _offset(model, disks[size], epochs=30, tmp_path=tmp_path)
    assert abs(dx) <= TOLERANCE_PX and abs(dy) <= TOLERANCE_PX, (dx, dy)


def test_simplenet_maps_miss_the_disks_without_the_correction(disks: dict[int, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimpleNet(backbone="efficientnet_lite0", image_size=128, grid_alignment=False, visualizer=False)
    dx, dy = _offset(model, disks[128], epochs=30, tmp_path=tmp_path)
    assert dx > TOLERANCE_PX and dy > TOLERANCE_PX, (dx, dy)


def test_distilled_classifier_maps_are_on_the_disks(disks: dict[int, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DistillClassifier(teacher_backbone="efficientnet_lite0", image_size=128, visualizer=False)
    dx, dy = _offset(model, disks[128], epochs=5, tmp_path=tmp_path)
    assert abs(dx) <= TOLERANCE_PX and abs(dy) <= TOLERANCE_PX, (dx, dy)
