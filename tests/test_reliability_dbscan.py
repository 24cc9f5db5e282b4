"""The DBSCAN post-processor under the same reliability cases: repeatable, batch of one, odd sizes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.data.checks import DataCheckError

from .reliability_support import datamodule, engine, make_model, tiny_data


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """UNetAE at an odd, non-square size (50×72), fitted one epoch on 12 normal images."""
    root = tiny_data(tmp_path_factory.mktemp("dbscan_data"), n_train=12)
    seed_everything(0, verbose=False)
    model = make_model("unet_ae", image_size=(50, 72))
    engine(tmp_path_factory.mktemp("dbscan_fit")).fit(model, datamodule=datamodule(root))
    return model, root


def _dbscan_test(model: object, root: Path, out: Path, eval_batch: int = 8) -> DBSCANPostProcessor:
    callback = DBSCANPostProcessor(mode="override", min_samples=3, plots=False)
    data = datamodule(root)
    data.eval_batch_size = eval_batch
    engine(out, callbacks=[callback]).test(model, datamodule=data, verbose=False)
    return callback


def _same(a: DBSCANPostProcessor, b: DBSCANPostProcessor, rtol: float = 0) -> None:
    assert a.metrics.keys() == b.metrics.keys()
    values = [[c.metrics[k] for k in a.metrics] for c in (a, b)]
    np.testing.assert_allclose(*values, rtol=rtol, atol=0, equal_nan=True)
    assert [r["image_path"] for r in a.results] == [r["image_path"] for r in b.results]
    assert [r["dbscan_label"] for r in a.results] == [r["dbscan_label"] for r in b.results]


def test_repeatable_and_independent_of_the_batch_size(fitted: tuple, tmp_path: Path) -> None:
    """Twice exactly the same decision and metrics; the same decision with test batches of one image.

    Batches of one change the embeddings by float rounding (~1e-8); the clustering standardises the embedding
    dimensions, and this barely trained model's embeddings hardly vary, so ``eps`` moves by ~0.1 %.
    """
    model, root = fitted
    first = _dbscan_test(model, root, tmp_path / "a")
    assert np.isfinite(first.metrics["eps"]) and len(first.results) > 0
    _same(first, _dbscan_test(model, root, tmp_path / "b"))
    _same(first, _dbscan_test(model, root, tmp_path / "c", eval_batch=1), rtol=1e-2)


def test_corrupt_test_image_is_named_before_clustering(fitted: tuple, tmp_path: Path) -> None:
    model, root = fitted
    broken = tmp_path / "data"
    tiny_data(broken, n_train=12)
    split = datamodule(broken)
    split.setup()
    path = Path(split.test_data.samples.image_path[0])  # in the test split, not the validation split
    path.write_bytes(path.read_bytes()[:150])
    callback = DBSCANPostProcessor(mode="override", min_samples=3, plots=False)
    with pytest.raises(DataCheckError, match=str(path)):
        engine(tmp_path / "run", callbacks=[callback]).test(model, datamodule=datamodule(broken), verbose=False)
    assert not getattr(callback, "results", None)
    assert torch.isfinite(next(model.parameters())).all()
