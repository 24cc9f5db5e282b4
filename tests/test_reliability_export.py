"""Export of a never-fitted model is a clear error, not a model that labels with a meaningless threshold.

anomalib's PostProcessor starts with NaN statistics; unfitted it passes raw scores and labels ``score > 0.5``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from anomalib.deploy import ExportType

from anomalib_simplenet.reliability.guards import NotFittedError

from .reliability_support import datamodule, engine, make_model, model_names, tiny_data


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("export", ["to_torch", "to_onnx", "to_openvino"])
def test_never_fitted_model_is_not_exported(name: str, export: str, tmp_path: Path) -> None:
    model = make_model(name)
    start = time.monotonic()
    with pytest.raises(NotFittedError, match=rf"{type(model).__name__} cannot be exported: it has no .*threshold"):
        getattr(model, export)(tmp_path)
    assert time.monotonic() - start < 5, "refused before any tracing"
    assert not any(tmp_path.rglob("*.*")), "nothing written"


def test_engine_export_of_a_never_fitted_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match=r"engine\.fit.*ckpt_path.*post_processor=False"):
        engine(tmp_path).export(make_model("unet_ae"), ExportType.TORCH, export_root=tmp_path)


def test_raw_score_export_is_allowed_on_purpose(tmp_path: Path) -> None:
    """Documented result: ``post_processor=False`` exports raw, unthresholded scores (no labels)."""
    model = make_model("unet_ae", post_processor=False)
    path = model.to_torch(tmp_path)
    exported = torch.load(path, weights_only=False)["model"]
    output = exported.eval()(torch.rand(1, 3, 32, 32))
    assert output.pred_label is None and output.pred_score is not None


def test_fitted_model_exports(tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "data")
    model = make_model("distill_classifier")
    engine(tmp_path / "run").fit(model, datamodule=datamodule(data))
    path = model.to_torch(tmp_path / "export")
    exported = torch.load(path, weights_only=False)["model"].eval()
    output = exported(torch.rand(2, 3, 32, 32))
    assert output.pred_label.dtype == torch.bool and torch.isfinite(output.pred_score).all()
