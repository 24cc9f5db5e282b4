"""A self-contained HTML version of the study's Markdown report: headings, lists, tables, images inline (base64).

Only the Markdown the report writes is understood (no third-party converter is needed).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #bbb;padding:3px 6px}img{max-width:100%}")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def markdown_to_html(text: str, base: Path, title: str = "") -> str:
    """HTML page of ``text``; image paths are relative to ``base`` and embedded as data URIs."""
    body: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if line.startswith("|"):
            rows = []
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(lines[index])
                index += 1
            header, *data = [r for r in rows if not re.fullmatch(r"\|(---\|)+", r.strip())]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in _cells(header)) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>" for r in data]
            body.append("</table>")
            continue
        if match := re.match(r"^(#{1,4}) (.*)$", line):
            level = len(match.group(1))
            body.append(f"<h{level}>{_inline(match.group(2))}</h{level}>")
        elif match := _IMAGE.match(line):
            path = base / match.group("src")
            data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
            body.append(f'<p><img alt="{html.escape(match.group("alt"))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
        index += 1
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
