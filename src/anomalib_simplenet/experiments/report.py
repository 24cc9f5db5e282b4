"""Comparison table (Markdown + CSV) and metric plot of a sweep's runs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

# Shown first when present; any other test metric follows in alphabetical order.
PREFERRED_METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score")


@dataclass
class RunResult:
    """Outcome of one run of a sweep."""

    setting: str
    run_dir: Path
    status: str = "ok"  # "ok" or "failed"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics
    train_loss: float = math.nan  # last epoch
    val_loss: float = math.nan  # last epoch
    best_val_loss: float = math.nan
    epochs: int = 0
    time_s: float = math.nan  # fit + test, wall clock
    checkpoint: str = ""  # the tested checkpoint ("" = the weights at the end of fit)


def metric_columns(results: Sequence[RunResult]) -> list[str]:
    """Test-metric names over all runs: the preferred ones first, then the rest sorted."""
    names = {name for result in results for name in result.metrics}
    return [m for m in PREFERRED_METRICS if m in names] + sorted(names - set(PREFERRED_METRICS))


def table_rows(results: Sequence[RunResult]) -> list[dict[str, object]]:
    """One flat row per run (the columns of the CSV and Markdown tables)."""
    metrics = metric_columns(results)
    rows = []
    for result in results:
        row: dict[str, object] = {"setting": result.setting, "status": result.status}
        row.update({name: result.metrics.get(name, math.nan) for name in metrics})
        row.update(
            train_loss=result.train_loss,
            val_loss=result.val_loss,
            best_val_loss=result.best_val_loss,
            epochs=result.epochs,
            time_s=result.time_s,
            run_dir=str(result.run_dir),
            error=result.error,
        )
        rows.append(row)
    return rows


def write_csv(results: Sequence[RunResult], path: Path) -> Path:
    """All columns at full precision."""
    rows = table_rows(results)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["setting"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"  # long times: no false precision
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(results: Sequence[RunResult]) -> str:
    """Markdown table; a failed run shows its error in the last column."""
    rows = table_rows(results)
    if not rows:
        return "(no runs)\n"
    columns = [c for c in rows[0] if c != "run_dir"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metric_figure(results: Sequence[RunResult], metrics: Sequence[str], title: str = "") -> Figure:
    """Grouped bars of ``metrics`` per setting; failed runs (or missing metrics) are marked, not dropped."""
    figure = Figure(figsize=(max(4.0, 1.4 * len(results) + 1.5), 3.8), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / max(1, len(metrics))
    for index, metric in enumerate(metrics):
        offsets = [i + (index - (len(metrics) - 1) / 2) * width for i in range(len(results))]
        values = [result.metrics.get(metric, math.nan) for result in results]
        bars = axis.bar(offsets, [0.0 if math.isnan(v) else v for v in values], width, label=metric)
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if math.isnan(value) else f"{value:.3f}"
            axis.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                          fontsize="x-small")
    axis.set_xticks(range(len(results)), [
        r.setting if r.status == "ok" else f"{r.setting}\n(failed)" for r in results
    ])
    axis.set(ylabel="test metric", ylim=(0, 1.1), title=title)
    figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=len(metrics), fontsize="small")
    return figure
