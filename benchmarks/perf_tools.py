"""Measurement helpers for ``benchmarks/performance.py``: memory, timing, shared backbone weights, epoch timer.

Memory on CPU is the process's resident set (Linux ``VmHWM`` high-water mark, reset through
``/proc/self/clear_refs`` before each measured call); on GPU it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from lightning.pytorch import Callback

from anomalib_simplenet.components.backbone import prepare_network
from anomalib_simplenet.components.packaged_weights import set_batchnorm_eps

_STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    value = _status_mb("VmRSS")
    if value is not None:
        return value
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


class PeakMemory:
    """Context manager: peak memory above the level at entry, in MiB (``.peak_mb``), and the absolute peak.

    On CPU without a resettable high-water mark, RSS is sampled every 2 ms instead.
    """

    def __init__(self, device: torch.device | str = "cpu", collect: bool = True) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.collect = collect
        self.peak_mb = 0.0
        self.absolute_mb = 0.0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0.0

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 (a final class)
        if self.collect:
            gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
        else:
            self._base = rss_mb()
            if not _reset_rss_peak():
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


def percentile(values: list[float], q: float) -> float:
    """``q``-th percentile (0–100) with linear interpolation."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


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
    runners: dict[str, Callable[[torch.Tensor], Any]],
    batch: torch.Tensor,
    throughput_runs: int,
    latency_runs: int,
    cuda: bool = False,
) -> dict[str, dict[str, float]]:
    """Throughput at ``batch``, batch-1 latency and peak memory per batch for every runner.

    Runs are interleaved (round r runs every model once, starting at a rotating model) so that load from
    other processes spreads over all models instead of hitting one; medians are reported.
    """
    names = list(runners)
    single = batch[:1]
    for name in names:  # warm-up: first-call allocations, oneDNN/OpenVINO kernel selection
        runners[name](batch)
        runners[name](single)
    batch_times: dict[str, list[float]] = {name: [] for name in names}
    single_times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(max(throughput_runs, latency_runs)):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            if round_index < throughput_runs:
                batch_times[name].append(timed(lambda name=name: runners[name](batch), cuda))
            if round_index < latency_runs:
                single_times[name].append(timed(lambda name=name: runners[name](single), cuda))
    results = {}
    for name in names:
        with PeakMemory("cuda" if cuda else "cpu") as memory:
            runners[name](batch)
        median_batch = statistics.median(batch_times[name])
        results[name] = {
            "images_per_s": len(batch) / median_batch,
            "batch_s_median": median_batch,
            "batch_s_all": batch_times[name],
            "latency_ms_median": 1000 * statistics.median(single_times[name]),
            "latency_ms_p95": 1000 * percentile(single_times[name], 95),
            "peak_mb_per_batch": memory.peak_mb,
        }
    return results


@contextmanager
def injected_timm_weights(state: dict[str, torch.Tensor], bn_eps: float | None = None) -> Iterator[list[str]]:
    """Inside the block every ``timm.create_model`` builds without download and loads ``state`` strictly.

    ``bn_eps`` is set on every BatchNorm of the created networks (the epsilon the weights were trained with).

    For anomalib models whose backbone has no offline switch (``Supersimplenet``) or whose offline switch
    changes training (``Glass(pre_trained=False)`` trains its backbone): they are built as with ImageNet
    weights, but the weights are ours. Every key of the created network must be in ``state`` with its shape.
    Yields the list of created model names.
    """
    original = timm.create_model
    created: list[str] = []

    def create(model_name: str, pretrained: bool = False, *args: Any, **kwargs: Any) -> torch.nn.Module:
        del pretrained
        kwargs.pop("pretrained_cfg_overlay", None)
        model = original(model_name, False, *args, **kwargs)
        own = model.state_dict()
        bad = [key for key, value in own.items() if key not in state or state[key].shape != value.shape]
        if bad:
            msg = f"shared backbone weights do not fit timm model {model_name!r}: {bad[:5]}"
            raise RuntimeError(msg)
        model.load_state_dict({key: state[key] for key in own})
        if bn_eps is not None:
            set_batchnorm_eps(model, bn_eps)
        prepare_network(model, model_name)  # the architecture the weights expect (inception_v3: TF pooling)
        created.append(model_name)
        return model

    timm.create_model = create
    try:
        yield created
    finally:
        timm.create_model = original


def first_conv_matches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``module`` holds the shared weights' first convolution (proof the injection worked)."""
    first = next(key for key, value in state.items() if value.ndim == 4)  # ``conv1.weight``, ``conv_stem.weight``
    reference = state[first]
    return any(
        name.endswith(first) and value.shape == reference.shape and torch.equal(value.cpu(), reference)
        for name, value in module.state_dict().items()
    )


class EpochTimer(Callback):
    """Per training epoch: seconds without validation (data loading included), the peak memory of a training step
    (absolute, and above the level at the step's start; max over the epoch's steps) and RSS at the epoch's end."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._start: float | None = None
        self._validation = 0.0
        self._validation_start = 0.0
        self._step_peaks: list[float] = []
        self._step_extra: list[float] = []
        self._memory: PeakMemory | None = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start, self._validation, self._step_peaks, self._step_extra = time.perf_counter(), 0.0, [], []

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._start is not None:
            self._validation += time.perf_counter() - self._validation_start

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._memory = PeakMemory(pl_module.device, collect=False).__enter__()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._memory is not None:
            self._memory.__exit__(None, None, None)
            self._step_peaks.append(self._memory.absolute_mb)
            self._step_extra.append(self._memory.peak_mb)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._start is None:
            return
        self.epochs.append({
            "seconds": time.perf_counter() - self._start - self._validation,
            "step_peak_mb": max(self._step_peaks, default=0.0),
            "step_extra_mb": max(self._step_extra, default=0.0),
            "rss_end_mb": rss_mb(),
        })
        self._start = None
