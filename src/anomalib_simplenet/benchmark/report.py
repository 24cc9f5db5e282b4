"""Results table: one row per variant with ratios against torch FP32, written as Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .export import Exported
from .measure import Measurement


@dataclass
class Row:
    """One variant's export outcome and measurement (``None`` measurement: it failed, see ``error``)."""

    exported: Exported
    measurement: Measurement | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        """Variant name."""
        return self.exported.variant.name

    @property
    def failure(self) -> str | None:
        """Export or measurement error."""
        return self.exported.error or self.error


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _points(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else 100.0 * (value - reference)


def row_record(row: Row, reference: Row) -> dict[str, Any]:
    """Flat record of a row: absolute numbers, ratios / differences against ``reference`` (torch FP32)."""
    m, ref = row.measurement, reference.measurement
    record: dict[str, Any] = {
        "variant": row.name,
        "status": "ok" if row.failure is None else f"failed: {row.failure}",
        "size_mb": None if row.exported.size_bytes is None else row.exported.size_bytes / 1e6,
        "export_s": row.exported.seconds,
    }
    for key in ("latency_ms_median", "latency_ms_p95", "throughput_ips", "image_auroc", "pixel_auroc", "image_f1"):
        record[key] = None if m is None else getattr(m, key)
    record["size_ratio"] = _ratio(row.exported.size_bytes, reference.exported.size_bytes)
    record["speedup_latency"] = _ratio(ref and ref.latency_ms_median, m and m.latency_ms_median)
    record["speedup_throughput"] = _ratio(m and m.throughput_ips, ref and ref.throughput_ips)
    for key in ("image_auroc", "pixel_auroc", "image_f1"):
        record[f"{key}_delta_pts"] = _points(record[key], ref and getattr(ref, key))
    both = m is not None and ref is not None and len(m.scores) == len(ref.scores) > 0
    record["max_abs_score_diff"] = max(abs(a - b) for a, b in zip(m.scores, ref.scores)) if both else None
    return record


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The report table; ratios are against the first record (torch FP32)."""
    header = [
        "variant", "status", "size MB (×)", "latency ms median / p95 (speed-up)", "throughput img/s (×)",
        "image AUROC (Δ pts)", "pixel AUROC (Δ pts)", "image F1 (Δ pts)", "max |Δ score|",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [
            r["variant"],
            r["status"].replace("|", "/"),
            f"{_fmt(r['size_mb'], '.1f')} ({_fmt(r['size_ratio'], '.2f', '×')})",
            (
                f"{_fmt(r['latency_ms_median'], '.1f')} / {_fmt(r['latency_ms_p95'], '.1f')} "
                f"({_fmt(r['speedup_latency'], '.2f', '×')})"
            ),
            f"{_fmt(r['throughput_ips'], '.1f')} ({_fmt(r['speedup_throughput'], '.2f', '×')})",
            f"{_fmt(r['image_auroc'], '.4f')} ({_fmt(r['image_auroc_delta_pts'], '+.2f')})",
            f"{_fmt(r['pixel_auroc'], '.4f')} ({_fmt(r['pixel_auroc_delta_pts'], '+.2f')})",
            f"{_fmt(r['image_f1'], '.4f')} ({_fmt(r['image_f1_delta_pts'], '+.2f')})",
            _fmt(r["max_abs_score_diff"], ".2e"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def records_of(rows: list[Row]) -> list[dict[str, Any]]:
    """:func:`row_record` of every row against the first (torch FP32)."""
    return [row_record(row, rows[0]) for row in rows]


def write_report(
    rows: list[Row], records: list[dict[str, Any]], run_dir: Path, context: dict[str, Any]
) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``results.json`` (``records`` of ``rows``, the per-image scores
    and the run's ``context``)."""
    paths = {"markdown": run_dir / "report.md", "csv": run_dir / "results.csv", "json": run_dir / "results.json"}
    notes = "\n".join(f"- {key}: {value}" for key, value in context.items())
    paths["markdown"].write_text(f"# Deployment benchmark\n\n{notes}\n\n{markdown_table(records)}\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    scores = {row.name: row.measurement.scores for row in rows if row.measurement is not None}
    payload = {"context": context, "results": records, "scores": scores}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    return paths
