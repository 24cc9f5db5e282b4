"""The deployment variants the report compares: torch FP32 and OpenVINO FP32 / FP16 / INT8 / INT8_PTQ / INT8_ACQ."""

from __future__ import annotations

from dataclasses import dataclass

from anomalib.deploy import CompressionType


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
