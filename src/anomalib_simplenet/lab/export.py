"""Deployment variants of a trained model (torch FP32, OpenVINO FP32/FP16/INT8/INT8_PTQ/INT8_ACQ): export each,
measure each on the raw test images, and the table comparing them with torch FP32 (see ``docs/measuring.md``)."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.deploy import CompressionType

from anomalib_simplenet.deploy import accuracy_control_quantize, post_training_quantize

from .data import load_test_samples
from .latency import MEASURED, load_runner, measure
from .report import fmt, markdown_table

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One exported form of the model: ``runtime`` is ``"torch"`` or ``"openvino"``."""

    name: str
    runtime: str
    compression: CompressionType | None = None

    @property
    def slug(self) -> str:
        """File-system name, e.g. ``openvino_int8_ptq``."""
        return self.name.lower().replace(" ", "_")


TORCH_FP32 = Variant("torch FP32", "torch")
OPENVINO_FP32 = Variant("OpenVINO FP32", "openvino")
OPENVINO_FP16 = Variant("OpenVINO FP16", "openvino", CompressionType.FP16)
OPENVINO_INT8 = Variant("OpenVINO INT8", "openvino", CompressionType.INT8)
OPENVINO_INT8_PTQ = Variant("OpenVINO INT8_PTQ", "openvino", CompressionType.INT8_PTQ)
OPENVINO_INT8_ACQ = Variant("OpenVINO INT8_ACQ", "openvino", CompressionType.INT8_ACQ)


def select_variants(with_acq: bool = False) -> list[Variant]:
    """Variants in report order; the reference (torch FP32) first. ACQ only on request (it is slow)."""
    variants = [TORCH_FP32, OPENVINO_FP32, OPENVINO_FP16, OPENVINO_INT8, OPENVINO_INT8_PTQ]
    return [*variants, OPENVINO_INT8_ACQ] if with_acq else variants


@dataclass
class Exported:
    """One variant's outcome: its model file and size, then its measurement, or the error of either step."""

    variant: Variant
    path: Path | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None
    measurement: dict[str, Any] | None = None  # of :func:`.latency.measure`


def short_error(error: BaseException) -> str:
    """First line of an exception, prefixed with its type (for a table cell)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def openvino_variant(
    model: AnomalibModule, graph: ov.Model, target: Path, compression: CompressionType | None = None,
    datamodule: AnomalibDataModule | None = None, max_drop: float = 0.01,
) -> Path:
    """OpenVINO IR at ``target`` (``.xml``) from a copy of ``graph`` (``ov.convert_model`` of the ONNX export),
    compressed as ``Engine.export`` would; ``graph`` itself is left unchanged for the next variant."""
    import openvino as ov

    ov_model = graph.clone()
    if compression == CompressionType.INT8_ACQ:
        ov_model = accuracy_control_quantize(ov_model, datamodule, max_drop=max_drop)
    elif compression == CompressionType.INT8_PTQ:
        ov_model = post_training_quantize(ov_model, datamodule)
    elif compression == CompressionType.INT8:  # weights only: anomalib's own NNCF call
        ov_model = model._compress_ov_model(ov_model, compression, datamodule)
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, target, compress_to_fp16=compression == CompressionType.FP16)
    return target


def export_variants(
    model: AnomalibModule, variants: list[Variant], root: Path, datamodule: AnomalibDataModule,
    input_size: tuple[int, int] | None = None, max_drop: float = 0.01,
) -> list[Exported]:
    """Export ``model`` as each of ``variants`` under ``root``; a failing variant records its error and the rest go on.
    The ONNX export (slow) runs once for all OpenVINO variants; ``input_size=None``: dynamic height and width."""
    import openvino as ov

    model.eval()
    results: list[Exported] = []
    graph: ov.Model | BaseException | None = None
    for index, variant in enumerate(variants, start=1):
        print(f"[export {index}/{len(variants)}] {variant.name} ...", flush=True)
        start, result = time.perf_counter(), Exported(variant)
        try:
            if variant.runtime == "torch":
                path = model.to_torch(root / variant.slug)
            else:
                if graph is None:  # a failed conversion is kept, so that every OpenVINO variant reports it
                    try:
                        graph = ov.convert_model(model.to_onnx(root / "onnx", input_size=input_size))
                    except Exception as error:  # noqa: BLE001
                        graph = error
                if isinstance(graph, BaseException):
                    raise graph
                path = openvino_variant(model, graph, root / variant.slug / "model.xml", variant.compression,
                                        datamodule, max_drop)
            files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]  # IR: weights beside
            result.path, result.size_bytes = path, sum(f.stat().st_size for f in files if f.is_file())
        except Exception as error:  # noqa: BLE001 (one variant's failure must not stop the others)
            logger.warning("export of %s failed:\n%s", variant.name, traceback.format_exc())
            result.error = short_error(error)
        result.seconds = time.perf_counter() - start
        status = "failed: " + result.error if result.error else f"{result.size_bytes / 1e6:.1f} MB"
        print(f"[export {index}/{len(variants)}] {variant.name}: {status} ({result.seconds:.1f} s)", flush=True)
        results.append(result)
    return results


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None or reference == 0 else value / reference


def row_record(row: Exported, reference: Exported) -> dict[str, Any]:
    """Flat record of a variant: absolute numbers, ratios / differences against ``reference`` (torch FP32)."""
    m, ref = row.measurement or {}, reference.measurement or {}
    record: dict[str, Any] = {
        "variant": row.variant.name, "status": "ok" if row.error is None else f"failed: {row.error}",
        "size_mb": None if row.size_bytes is None else row.size_bytes / 1e6, "export_s": row.seconds,
        **{key: m.get(key) for key in MEASURED}, "size_ratio": _ratio(row.size_bytes, reference.size_bytes),
        "speedup_latency": _ratio(ref.get("latency_ms_median"), m.get("latency_ms_median")),
        "speedup_throughput": _ratio(m.get("throughput_ips"), ref.get("throughput_ips")),
    }
    for key in ("image_auroc", "pixel_auroc", "image_f1"):
        value, base = m.get(key), ref.get(key)
        record[f"{key}_delta_pts"] = None if value is None or base is None else 100.0 * (value - base)
    scores, reference_scores = m.get("scores"), ref.get("scores")
    both = scores and reference_scores and len(scores) == len(reference_scores)
    record["max_abs_score_diff"] = max(abs(a - b) for a, b in zip(scores, reference_scores)) if both else None
    return {**record, "scores": scores}


def variants_table(records: list[dict[str, Any]]) -> str:
    """The variants table; ratios are against the first record (torch FP32). Accuracy is on the exported models'
    own (normalised) outputs: the graphs hold anomalib's post-processing."""
    header = ["variant", "status", "size MB (×)", "latency ms median / p95 (speed-up)", "throughput img/s (×)",
              "image AUROC normalised (Δ pts)", "pixel AUROC normalised (Δ pts)", "image F1 (Δ pts)",
              "max |Δ score|"]
    rows = [[
        r["variant"], r["status"].replace("|", "/"), f"{fmt(r['size_mb'], '.1f')} ({fmt(r['size_ratio'], '.2f')}×)",
        f"{fmt(r['latency_ms_median'], '.1f')} / {fmt(r['latency_ms_p95'], '.1f')} "
        f"({fmt(r['speedup_latency'], '.2f')}×)",
        f"{fmt(r['throughput_ips'], '.1f')} ({fmt(r['speedup_throughput'], '.2f')}×)",
        *(f"{fmt(r[k])} ({fmt(r[k + '_delta_pts'], '+.2f')})" for k in ("image_auroc", "pixel_auroc", "image_f1")),
        fmt(r["max_abs_score_diff"], ".2e"),
    ] for r in records]
    return markdown_table(header, rows)


def measure_variants(
    model: AnomalibModule, variants: list[Variant], root: Path, datamodule: AnomalibDataModule, threads: int,
    throughput_seconds: float, warmup: int = 3, batch_size: int = 8, ov_precision: str = "f32",
    input_size: tuple[int, int] | None = None, max_drop: float = 0.01, label: str = "",
) -> list[dict[str, Any]]:
    """Export ``model`` as each variant under ``root`` and measure each; one record per variant, torch first."""
    exported = export_variants(model, variants, root, datamodule, input_size, max_drop)
    samples = load_test_samples(datamodule)
    size = tuple(int(s) for s in model.input_size)
    for index, result in enumerate(exported, start=1):
        print(f"==> measuring {index}/{len(exported)}: {result.variant.name} on {len(samples)} test images", flush=True)
        if result.error is None:
            try:
                runner = load_runner(result.variant.runtime, result.path, threads, ov_precision)
                result.measurement = measure(runner, samples, size, f"{label} {result.variant.name}".strip(), warmup,
                                             batch_size, throughput_seconds)
            except Exception as error:  # noqa: BLE001 (the other variants still get measured)
                traceback.print_exc()
                result.error = short_error(error)
    return [row_record(row, exported[0]) for row in exported]
