"""Shared fixtures: small synthetic MVTec-layout data, a real-data subset, and small model settings."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from anomalib_simplenet.data import make_synthetic_mvtec
from anomalib_simplenet.lab import data as lab_data

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
    if not (SHARED_DATA / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA / 'magnetic_tile'}")
    return lab_data.subset(SHARED_DATA, "magnetic_tile", tmp_path_factory.mktemp("magnetic_tile_subset"),
                           max_train=24, test_good=8, test_defects=4, defects=["blowhole", "crack"])


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
