"""PNG figure of a benchmark run: latency against image AUROC, throughput and size on disk per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_report(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Three panels from the report records; failed variants are left out of the plots (the table lists them)."""
    ok = [r for r in records if r["latency_ms_median"] is not None]
    names = [r["variant"] for r in ok]
    # A bare Figure on an Agg canvas: files only, and the caller's pyplot backend stays as it was.
    figure = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(figure)
    scatter, speed, size = figure.subplots(1, 3)
    markers = "osD^v<>p"
    for index, record in enumerate(ok):  # a legend, not annotations: variants of equal accuracy overlap
        scatter.scatter(record["latency_ms_median"], record["image_auroc"], s=50, marker=markers[index % 8],
                        label=record["variant"], alpha=0.8)  # fmt: skip
    scatter.legend(fontsize=8)
    scatter.set(xlabel="latency, batch 1, median (ms)", ylabel="image AUROC", title="accuracy vs latency")
    speed.barh(names, [r["throughput_ips"] for r in ok], color="tab:green")
    speed.set(xlabel="images / s", title="throughput")
    size.barh(names, [r["size_mb"] for r in ok], color="tab:orange")
    size.set(xlabel="MB on disk", title="model size")
    for axis in (speed, size):
        axis.invert_yaxis()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
