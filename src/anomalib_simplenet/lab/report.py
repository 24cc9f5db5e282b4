"""Tables of every measurement: one cell formatter, one Markdown table, the raw/normalised metric columns, table
files and an HTML page of the Markdown these tables and reports write (no third-party converter)."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (key in a record, column title): a raw-score metric (the model's own ``pred_score`` / ``anomaly_map``) beside its
# normalised twin ``key + NORMALISED`` (anomalib's min-max-normalised, clamped scores, what its Evaluator sees).
METRIC_COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "pixel AUPRO"))
NORMALISED = "_normalised"


def fmt(value: Any, spec: str = ".4f") -> str:  # noqa: ANN401
    """A table cell: ``–`` for missing or NaN numbers; integers as they are; text without ``|`` or newlines."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return str(value) if isinstance(value, int) and spec == ".4f" else f"{value:{spec}}"
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Markdown table; every cell goes through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _present(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(key, title) for key, title in METRIC_COLUMNS if any(r.get(key) is not None for r in records)]


def metric_header(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Titles of the metric columns present in ``records``: raw, then its normalised twin and the difference."""
    return [f"{title} {column}" if column else "Δ normalised − raw" for _, title in _present(records)
            for column in ("raw", "normalised", "")]


def metric_cells(record: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cells of :func:`metric_header` for one record (``–`` where a value is missing)."""
    cells = []
    for key, _ in _present(records):
        raw, normalised = record.get(key), record.get(key + NORMALISED)
        delta = None if raw is None or normalised is None else normalised - raw
        cells += [fmt(raw), fmt(normalised), fmt(delta, "+.4f")]
    return cells


def write_table_files(folder: Path, text: str, records: Sequence[Mapping[str, Any]],
                      payload: Mapping[str, Any] | None = None, stem: str = "report",
                      data_stem: str = "results") -> dict[str, Path]:
    """``<stem>.md`` (``text``), ``<data_stem>.csv`` (flat ``records``), ``<data_stem>.json`` (``payload`` or the
    records) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / f"{stem}.md", "csv": folder / f"{data_stem}.csv",
             "json": folder / f"{data_stem}.json"}
    paths["markdown"].write_text(text)
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in records for k in r)) or ["empty"])
        writer.writeheader()
        writer.writerows(records)
    paths["json"].write_text(json.dumps(payload if payload is not None else list(records), indent=2, default=str))
    return paths


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #bbb;padding:3px 6px}img{max-width:100%}")


def _inline(text: str) -> str:
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _row(line: str, tag: str) -> str:
    cells = (f"<{tag}>{_inline(cell.strip())}</{tag}>" for cell in line.strip().strip("|").split(" | "))
    return "<tr>" + "".join(cells) + "</tr>"


def markdown_to_html(text: str, base: Path, title: str = "") -> str:
    """HTML page of ``text``; image paths are relative to ``base`` and embedded as data URIs."""
    body: list[str] = []
    lines, index = text.splitlines(), 0
    while index < len(lines):
        line = lines[index].rstrip()
        index += 1
        if line.startswith("|"):
            rows = [line]
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(lines[index])
                index += 1
            header, *data = [r for r in rows if not re.fullmatch(r"\|(---\|)+", r.strip())]
            body += ["<table>" + _row(header, "th"), *(_row(r, "td") for r in data), "</table>"]
        elif match := re.match(r"^(#{1,4}) (.*)$", line):
            level = len(match.group(1))
            body.append(f"<h{level}>{_inline(match.group(2))}</h{level}>")
        elif match := re.match(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$", line):
            path = base / match.group("src")
            data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
            body.append(f'<p><img alt="{html.escape(match.group("alt"))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
