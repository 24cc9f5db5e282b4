"""Shared fixtures: small synthetic MVTec-layout data, a real-data subset, and small model settings."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from anomalib_simplenet.data import make_synthetic_mvtec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANOMALIB_SIMPLENET_DATA", REPO_ROOT.parent / "shared" / "data"))

# Small and fast, but the same code paths as the defaults (2 layers, 3×3 aggregation, BN discriminator).
TINY_SIMPLENET = {
    "backbone": "resnet18",
    "pre_trained": False,
    "image_size": 64,
    "pretrain_embed_dim": 256,
    "target_embed_dim": 256,
    "discriminator_hidden": 128,
}


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> object:
    """Tiny models: a second intra-op thread only busy-waits, and on a shared CPU that costs up to 20× time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def anomalib_command() -> str:
    """The ``anomalib`` console script of this interpreter's environment."""
    return shutil.which("anomalib") or str(Path(sys.executable).with_name("anomalib"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding the ``synthetic`` category (64 px, 16 train, 6 good + 2×6 defect test images)."""
    root = tmp_path_factory.mktemp("synthetic_data")
    make_synthetic_mvtec(root, image_size=64, n_train=16, n_test_good=6, n_test_defect=6, seed=0)
    return root


@pytest.fixture(scope="session")
def magnetic_tile_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root with a small deterministic subset of the real magnetic_tile set (grayscale, variable sizes)."""
    source = SHARED_DATA / "magnetic_tile"
    if not source.is_dir():
        pytest.skip(f"real data not found at {source}")
    root = tmp_path_factory.mktemp("magnetic_tile_subset")
    target = root / "magnetic_tile"
    take = {"train/good": 24, "test/good": 8, "test/blowhole": 4, "test/crack": 4}
    for folder, count in take.items():
        files = sorted((source / folder).glob("*.png"))[:count]
        (target / folder).mkdir(parents=True)
        for file in files:
            shutil.copy(file, target / folder / file.name)
            defect = folder.split("/")[1]
            if folder.startswith("test/") and defect != "good":
                mask = source / "ground_truth" / defect / f"{file.stem}_mask.png"
                (target / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, target / "ground_truth" / defect / mask.name)
    return root


def mvtec_datamodule(  # noqa: ANN201
    root: Path, category: str, image_batch: int = 8, train_batch: int | None = None, cls: type | None = None, **kwargs,
):
    """MVTecAD (or ``cls``) datamodule whose validation images are a split of the test folder, disjoint from test.

    ``train_batch`` defaults to ``image_batch``; ``kwargs`` go to the datamodule.
    """
    from anomalib.data import MVTecAD

    return (cls or MVTecAD)(
        root=root,
        category=category,
        train_batch_size=image_batch if train_batch is None else train_batch,
        eval_batch_size=image_batch,
        num_workers=0,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
        **kwargs,
    )
