"""What each chosen model costs to run, and its deployment variants, measured with the benchmark's own code.

Every model is exported as torch FP32 (latency, throughput, size on disk, image AUROC of the exported model on the
raw test images); the best ``quantize_top`` are also exported as OpenVINO FP32, FP16, INT8 (weights) and INT8_PTQ
(calibrated on the validation split) and measured the same way, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule

from anomalib_simplenet.benchmark.data import load_test_samples
from anomalib_simplenet.benchmark.export import export_variants, short_error
from anomalib_simplenet.benchmark.measure import measure
from anomalib_simplenet.benchmark.report import Row, markdown_table, records_of
from anomalib_simplenet.benchmark.runtime import load_runner
from anomalib_simplenet.benchmark.variants import TORCH_FP32, select_variants

QUANTIZED_VARIANTS = tuple(v for v in select_variants() if v is not TORCH_FP32)


@dataclass
class CostResult:
    """Measured variants of one model: the benchmark's records (first = torch FP32) and its parameter count."""

    label: str
    parameters: int
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reference(self) -> dict[str, Any]:
        """The torch FP32 record."""
        return self.records[0]

    def table(self) -> str:
        """The benchmark's Markdown table of this model's variants."""
        return markdown_table(self.records)


def parameter_count(model: AnomalibModule) -> int:
    """Parameters of the deployed torch module (trainable or frozen; fitted Gaussians are buffers, in the size)."""
    return sum(p.numel() for p in model.model.parameters())


def measure_model(
    label: str,
    model: AnomalibModule,
    datamodule: AnomalibDataModule,
    out: Path,
    quantize: bool,
    threads: int,
    throughput_seconds: float,
    warmup: int = 3,
    batch_size: int = 8,
) -> CostResult:
    """Export ``model`` (torch FP32, plus the OpenVINO variants when ``quantize``) and measure every variant."""
    variants = [TORCH_FP32, *(QUANTIZED_VARIANTS if quantize else ())]
    exported = export_variants(model, variants, out, datamodule)
    samples = load_test_samples(datamodule)
    input_size = tuple(int(s) for s in model.input_size)
    rows = []
    for result in exported:
        row = Row(result)
        if result.error is None:
            try:
                runner = load_runner(result.variant.runtime, result.path, threads)
                row.measurement = measure(runner, samples, input_size, f"{label} {result.variant.name}", warmup,
                                          batch_size, throughput_seconds)
            except Exception as error:  # noqa: BLE001 - the other variants still get measured
                row.error = short_error(error)
        rows.append(row)
    return CostResult(label, parameter_count(model), records_of(rows))
