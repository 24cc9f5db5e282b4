"""Export a trained model to every variant, one ONNX graph shared by the OpenVINO variants.

Each OpenVINO variant repeats what ``Engine.export(model, ExportType.OPENVINO, compression_type=...)`` does
(``ov.convert_model`` of the ONNX graph, compression, ``ov.save_model``) without re-tracing and re-converting
the model for every variant. INT8 (weights) goes through the model's own ``_compress_ov_model`` (anomalib's NNCF
call); INT8_PTQ and INT8_ACQ through :mod:`anomalib_simplenet.deploy.quantization`, which fixes anomalib 2.7's
versions (maps kept in float, static sizes, a working accuracy control) and is what ``Engine.export`` runs for
models that carry ``QuantizationFixesMixin``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anomalib.deploy import CompressionType

from anomalib_simplenet.deploy import accuracy_control_quantize, post_training_quantize

from .variants import Variant

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

logger = logging.getLogger(__name__)


@dataclass
class Exported:
    """Outcome of exporting one variant: a model file and its size, or the error."""

    variant: Variant
    path: Path | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None


def files_size(path: Path) -> int:
    """Bytes on disk of a model file, with the ``.bin`` weights next to an OpenVINO ``.xml``."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(file.stat().st_size for file in files if file.is_file())


def short_error(error: BaseException) -> str:
    """First line of an exception, prefixed with its type (for a table cell)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def openvino_variant(
    model: AnomalibModule,
    graph: ov.Model,
    target: Path,
    compression: CompressionType | None = None,
    datamodule: AnomalibDataModule | None = None,
    max_drop: float = 0.01,
) -> Path:
    """OpenVINO IR at ``target`` (``.xml``) from a copy of ``graph`` (``ov.convert_model`` of the ONNX export),
    compressed as ``Engine.export`` would; ``graph`` itself is left unchanged for the next variant."""
    import openvino as ov

    ov_model = graph.clone()
    if compression == CompressionType.INT8_ACQ:
        ov_model = accuracy_control_quantize(ov_model, datamodule, max_drop=max_drop)
    elif compression == CompressionType.INT8_PTQ:
        ov_model = post_training_quantize(ov_model, datamodule)
    elif compression == CompressionType.INT8:
        ov_model = model._compress_ov_model(ov_model, compression, datamodule)
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, target, compress_to_fp16=compression == CompressionType.FP16)
    return target


def _convert(model: AnomalibModule, root: Path, input_size: tuple[int, int] | None) -> ov.Model | BaseException:
    """ONNX export (slow: tracing) and conversion, once for all OpenVINO variants; an error is returned so that
    each OpenVINO variant reports it."""
    import openvino as ov

    try:
        return ov.convert_model(model.to_onnx(root, input_size=input_size))
    except Exception as error:  # noqa: BLE001
        return error


def export_variants(
    model: AnomalibModule,
    variants: list[Variant],
    root: Path,
    datamodule: AnomalibDataModule,
    input_size: tuple[int, int] | None = None,
    max_drop: float = 0.01,
) -> list[Exported]:
    """Export ``model`` as each of ``variants`` under ``root``; a failing variant records its error and the rest go on.

    ``input_size`` fixes the exported image size (``None``: dynamic height and width).
    """
    model.eval()
    results: list[Exported] = []
    graph: ov.Model | BaseException | None = None
    for index, variant in enumerate(variants, start=1):
        print(f"[export {index}/{len(variants)}] {variant.name} ...", flush=True)
        start = time.perf_counter()
        result = Exported(variant)
        try:
            if variant.runtime == "torch":
                path = model.to_torch(root / variant.slug)
            else:
                if graph is None:
                    graph = _convert(model, root / "onnx", input_size)
                if isinstance(graph, BaseException):
                    raise graph
                target = root / variant.slug / "model.xml"
                path = openvino_variant(model, graph, target, variant.compression, datamodule, max_drop)
            result.path, result.size_bytes = path, files_size(path)
        except Exception as error:  # noqa: BLE001 (one variant's failure must not stop the others)
            logger.warning("export of %s failed:\n%s", variant.name, traceback.format_exc())
            result.error = short_error(error)
        result.seconds = time.perf_counter() - start
        status = "failed: " + result.error if result.error else f"{result.size_bytes / 1e6:.1f} MB"
        print(f"[export {index}/{len(variants)}] {variant.name}: {status} ({result.seconds:.1f} s)", flush=True)
        results.append(result)
    return results
