"""What each chosen model costs to run, and its deployment variants, measured by :mod:`anomalib_simplenet.lab.export`.

Every model is exported as torch FP32 (batch-1 latency on each raw test image, throughput on batches of
``batch_size`` images at the model's input size, size on disk, image AUROC of the exported model on the raw test
images) and its FLOPs per image are counted (:mod:`..lab.flops`); the best ``quantize_top`` are also exported as
OpenVINO FP32, FP16, INT8 (weights) and INT8_PTQ (calibrated on the validation split) and measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule

from anomalib_simplenet.lab.export import TORCH_FP32, measure_variants, select_variants
from anomalib_simplenet.lab.flops import forward_flops

QUANTIZED_VARIANTS = tuple(v for v in select_variants() if v is not TORCH_FP32)


@dataclass
class CostResult:
    """Measured variants of one model: the records (first = torch FP32, per-image scores dropped), parameters,
    FLOPs of one image at the input size, and the batch size of the throughput runs."""

    label: str
    parameters: int
    flops: int
    batch_size: int
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reference(self) -> dict[str, Any]:
        """The torch FP32 record."""
        return self.records[0]


def parameter_count(model: AnomalibModule) -> int:
    """Parameters of the deployed torch module (trainable or frozen; fitted Gaussians are buffers, in the size)."""
    return sum(p.numel() for p in model.model.parameters())


def measure_model(
    label: str, model: AnomalibModule, datamodule: AnomalibDataModule, out: Path, quantize: bool, threads: int,
    throughput_seconds: float, warmup: int = 3, batch_size: int = 16,
) -> CostResult:
    """Export ``model`` (torch FP32, plus the OpenVINO variants when ``quantize``) and measure every variant."""
    variants = [TORCH_FP32, *(QUANTIZED_VARIANTS if quantize else ())]
    records = measure_variants(model, variants, out, datamodule, threads, throughput_seconds, warmup, batch_size,
                               label=label)
    for record in records:
        record.pop("scores", None)
    flops = forward_flops(model.model, tuple(int(s) for s in model.input_size))
    return CostResult(label, parameter_count(model), flops, batch_size, records)
