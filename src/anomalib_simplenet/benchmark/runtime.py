"""Run an exported variant on a batch of images: the torch ``.pt`` (as ``TorchInferencer``) or an OpenVINO IR."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from anomalib_simplenet.deploy.precision import precision_config


class Runner(Protocol):
    """Images ``(N, 3, H, W)`` float in [0, 1] → outputs by name (``pred_score`` ``(N,)``, ``anomaly_map`` ...)."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TorchRunner:
    """The model saved by ``Engine.export(TORCH)`` (``{"model": module}``); its ``forward`` pre- and post-processes."""

    def __init__(self, path: Path, threads: int) -> None:
        # Our own file from this run: unpickling it is safe (TorchInferencer asks for TRUST_REMOTE_CODE here).
        self.model = torch.load(path, map_location="cpu", weights_only=False)["model"].eval()
        torch.set_num_threads(threads)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass without autograd."""
        with torch.inference_mode():
            outputs = self.model(images)
        return {name: value for name, value in outputs._asdict().items() if value is not None}


class OpenVINORunner:
    """An OpenVINO IR compiled for the CPU with ``threads`` inference threads, the latency hint and ``precision``
    (``f32`` by default: OpenVINO would run FP32 IRs in bfloat16 on bf16-capable CPUs, see :mod:`..deploy.precision`).
    """

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **precision_config(precision)}
        self.model = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One synchronous inference (input converted to float32 numpy, outputs back to tensors)."""
        result = self.model(images.numpy())
        return {output.any_name: torch.from_numpy(result[output]) for output in self.model.outputs}


def load_runner(runtime: str, path: Path, threads: int, ov_precision: str = "f32") -> Runner:
    """Runner for ``runtime`` (``"torch"`` or ``"openvino"``)."""
    if runtime == "torch":
        return TorchRunner(path, threads)
    if runtime == "openvino":
        return OpenVINORunner(path, threads, ov_precision)
    msg = f"unknown runtime {runtime!r} (expected 'torch' or 'openvino')"
    raise ValueError(msg)
