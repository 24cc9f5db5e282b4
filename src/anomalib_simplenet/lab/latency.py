"""Speed and memory: peak memory, interleaved inference runs, the runners of exported models and their measurement."""

from __future__ import annotations

import gc
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from anomalib_simplenet.components.resize import antialiased_resize
from anomalib_simplenet.deploy.precision import precision_config
from anomalib_simplenet.deploy.quantization import prediction_from_outputs

from .scores import auroc, f1_score

# Images ``(N, 3, H, W)`` float in [0, 1] → outputs by name (``pred_score`` ``(N,)``, ``anomaly_map`` ...).
Runner = Callable[[torch.Tensor], dict[str, torch.Tensor]]
MEASURED = ("latency_ms_median", "latency_ms_p95", "throughput_ips", "image_auroc", "pixel_auroc", "image_f1")


def _status_mb(name: str) -> float | None:
    """A ``/proc/self/status`` memory field in MiB (None off Linux)."""
    try:
        match = re.search(rf"^{name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    if (value := _status_mb("VmRSS")) is not None:
        return value
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakMemory:
    """Context manager: peak memory above the level at entry (``peak_mb``) and the absolute peak, in MiB: on CPU the
    resident set (Linux: its high-water mark; elsewhere sampled every 2 ms), on GPU the allocated memory."""

    def __init__(self, device: torch.device | str = "cpu", collect: bool = True) -> None:
        self.cuda, self.collect = torch.device(device).type == "cuda", collect
        self.peak_mb = self.absolute_mb = self._sampled = 0.0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 (a final class)
        if self.collect:
            gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
            return self
        self._base = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's high-water mark
            resettable = _status_mb("VmHWM") is not None
        except OSError:
            resettable = False
        if not resettable:
            self._sampled = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled = max(self._sampled, rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.absolute_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.absolute_mb = max(self._sampled, rss_mb())
        else:
            self.absolute_mb = _status_mb("VmHWM") or rss_mb()
        self.peak_mb = max(0.0, self.absolute_mb - self._base)


def timed(run: Callable[[], Any], cuda: bool = False) -> float:
    """Seconds one call of ``run`` takes (GPU work included)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_inference(
    runners: dict[str, Callable[[torch.Tensor], Any]], batch: torch.Tensor, throughput_runs: int, latency_runs: int,
    cuda: bool = False,
) -> dict[str, dict[str, Any]]:
    """Throughput at ``batch``, batch-1 latency (medians) and peak memory per batch for every runner; runs are
    interleaved (round r runs every model once, from a rotating start) so that other load spreads over all models."""
    names, single = list(runners), batch[:1]
    for name in names:  # warm-up: first-call allocations, oneDNN/OpenVINO kernel selection
        runners[name](batch)
        runners[name](single)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for round_index in range(max(throughput_runs, latency_runs)):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            if round_index < throughput_runs:
                times[name][0].append(timed(lambda name=name: runners[name](batch), cuda))
            if round_index < latency_runs:
                times[name][1].append(timed(lambda name=name: runners[name](single), cuda))
    results = {}
    for name, (batch_times, single_times) in times.items():
        with PeakMemory("cuda" if cuda else "cpu") as memory:
            runners[name](batch)
        median_batch = statistics.median(batch_times)
        results[name] = {"images_per_s": len(batch) / median_batch, "batch_s_median": median_batch,
                         "batch_s_all": batch_times, "latency_ms_median": 1000 * statistics.median(single_times),
                         "latency_ms_p95": 1000 * float(np.percentile(single_times, 95)),
                         "peak_mb_per_batch": memory.peak_mb}
    return results


def module_runner(module: torch.nn.Module, device: torch.device | str = "cpu") -> Runner:
    """``module`` in eval mode on ``device``, without autograd; named outputs (an ``InferenceBatch``) become a dict
    without the empty fields, outputs without names (a bare backbone's feature list) stay as they are."""
    module.eval().to(device)

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = module(images.to(device))
        return {k: v.cpu() for k, v in out._asdict().items() if v is not None} if hasattr(out, "_asdict") else out

    return run


class OpenVINORunner:
    """An OpenVINO IR compiled for the CPU with ``threads`` threads, the latency hint and ``precision`` (``f32`` by
    default: OpenVINO would run FP32 IRs in bfloat16 on bf16-capable CPUs, see :mod:`..deploy.precision`)."""

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **precision_config(precision)}
        self.model = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One synchronous inference (float32 numpy in, tensors out)."""
        result = self.model(images.numpy())
        return {output.any_name: torch.from_numpy(result[output]) for output in self.model.outputs}


def load_runner(runtime: str, path: Path, threads: int, ov_precision: str = "f32") -> Runner:
    """Runner of an exported model: ``"torch"`` (the file of ``Engine.export(TORCH)``, whose ``forward`` pre- and
    post-processes) or ``"openvino"`` (an IR)."""
    if runtime == "torch":
        torch.set_num_threads(threads)
        # Our own file from this run: unpickling it is safe (TorchInferencer asks for TRUST_REMOTE_CODE here).
        return module_runner(torch.load(path, map_location="cpu", weights_only=False)["model"])
    if runtime == "openvino":
        return OpenVINORunner(path, threads, ov_precision)
    msg = f"unknown runtime {runtime!r} (expected 'torch' or 'openvino')"
    raise ValueError(msg)


def measure(runner: Runner, samples: list, input_size: tuple[int, int], label: str, warmup: int = 3,
            batch_size: int = 8, throughput_seconds: float = 5.0) -> dict[str, Any]:
    """Every raw test image alone (batch 1, original size, timed after ``warmup`` calls): latency and metrics on
    the runner's own (normalised) outputs; then throughput on batches of ``batch_size`` images resized to
    ``input_size`` for ≥ ``throughput_seconds``. Keys: :data:`MEASURED` and every image's ``scores``."""
    for _ in range(warmup):
        runner(samples[0].image[None])
    latencies, scores, predicted, maps, masks = [], [], [], [], []
    for sample in tqdm(samples, desc=f"{label}: test images", leave=False, mininterval=2.0):
        start = time.perf_counter()
        outputs = runner(sample.image[None])
        latencies.append((time.perf_counter() - start) * 1e3)
        prediction = prediction_from_outputs(outputs, sample.label, sample.mask)
        scores.append(float(prediction.pred_score))
        predicted.append(prediction.pred_label is not None and bool(prediction.pred_label))
        maps.append(prediction.anomaly_map.flatten().numpy())
        masks.append(prediction.gt_mask.flatten().numpy())
    images = torch.stack([antialiased_resize(s.image, input_size) for s in samples[:batch_size]])
    while len(images) < batch_size:  # fewer test images than the batch: repeat them
        images = torch.cat([images, images])[:batch_size]
    runner(images)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < throughput_seconds:
        runner(images)
        done += batch_size
    truth = np.array([s.label for s in samples]) == 1
    values = (statistics.median(latencies), float(np.percentile(latencies, 95)), done / (time.perf_counter() - start),
              auroc(truth, np.array(scores)), auroc(np.concatenate(masks), np.concatenate(maps)),
              f1_score(np.array(predicted), truth))
    return {**dict(zip(MEASURED, values, strict=True)), "scores": scores}
