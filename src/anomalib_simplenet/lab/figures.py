"""Figures of every measurement, drawn on bare ``Figure`` objects: the caller's pyplot backend stays as it was."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def loss_figure(histories: Mapping[str, list[dict[str, float]]], title: str = "") -> Figure:
    """Train (solid) and validation (dashed) loss per epoch, one colour per run (``histories``: run name →
    :meth:`LossHistory.rows`, or rows read back from its CSV)."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for index, (name, rows) in enumerate(histories.items()):
        epochs, prefix = [row["epoch"] for row in rows], f"{name} " if len(histories) > 1 else ""
        for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
            axis.plot(epochs, [row[key] for row in rows], style, color=f"C{index % 10}", label=f"{prefix}{key}")
    axis.set(xlabel="epoch", ylabel="loss", title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return figure


def plot_report(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """A deployment run's three panels (accuracy vs latency, throughput, size); failed variants are left out."""
    ok = [r for r in records if r["latency_ms_median"] is not None]
    names = [r["variant"] for r in ok]
    figure = Figure(figsize=(16, 4.8))
    scatter, speed, size = figure.subplots(1, 3)
    for index, record in enumerate(ok):  # a legend, not annotations: variants of equal accuracy overlap
        scatter.scatter(record["latency_ms_median"], record["image_auroc"], s=50, marker="osD^v<>p"[index % 8],
                        label=record["variant"], alpha=0.8)
    scatter.legend(fontsize=8)
    scatter.set(xlabel="latency, batch 1, median (ms)", ylabel="image AUROC", title="accuracy vs latency")
    for axis, key, colour, label, panel in ((speed, "throughput_ips", "tab:green", "images / s", "throughput"),
                                            (size, "size_mb", "tab:orange", "MB on disk", "model size")):
        axis.barh(names, [r[key] for r in ok], color=colour)
        axis.set(xlabel=label, title=panel)
        axis.invert_yaxis()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def metric_figure(results: Sequence[Any], metrics: Sequence[str], title: str = "") -> Figure:
    """Grouped bars of ``metrics`` per setting (a :class:`FitResult`); failed runs (or missing metrics) are marked,
    not dropped."""
    figure = Figure(figsize=(max(4.0, 1.4 * len(results) + 1.5), 3.8), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / max(1, len(metrics))
    for index, metric in enumerate(metrics):
        offsets = [i + (index - (len(metrics) - 1) / 2) * width for i in range(len(results))]
        values = [result.metrics.get(metric, math.nan) for result in results]
        bars = axis.bar(offsets, [0.0 if math.isnan(v) else v for v in values], width, label=metric)
        for bar, value in zip(bars, values, strict=True):
            axis.annotate("n/a" if math.isnan(value) else f"{value:.3f}", (bar.get_x() + bar.get_width() / 2,
                          bar.get_height()), ha="center", va="bottom", fontsize="x-small")
    axis.set_xticks(range(len(results)), [r.name if r.status == "ok" else f"{r.name}\n(failed)" for r in results])
    axis.set(ylabel="test metric", ylim=(0, 1.1), title=title)
    figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=len(metrics), fontsize="small")
    return figure


def roc_figure(curves: Mapping[str, tuple[list[float], list[float], float]], path: Path, title: str) -> Path:
    """Test ROC curves, one per model: ``label → (fpr, tpr, auroc)``."""
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axis = figure.subplots()
    for label, (fpr, tpr, value) in curves.items():
        axis.plot(fpr, tpr, label=f"{label} (AUROC {value:.3f})")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="false-alarm rate", ylabel="detection rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(fontsize="small", loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path
