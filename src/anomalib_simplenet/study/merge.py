"""One report from study runs made separately (one category per run, the all-categories classifier as its own run):
``python -m anomalib_simplenet.study --merge RUN_A RUN_B ... --out MERGED``.

Rows are only comparable when every run used the same study settings (:data:`MUST_MATCH`), so runs that differ are
refused, as is a row (category, scope, model) that two runs both hold. Accuracy rows and every fitted setting come
from all runs; cost, quantization and DBSCAN from the first run (the main category's). Figures stay in their run
folders: ``report.md`` links to them, ``report.html`` embeds them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run import finish

# StudyConfig fields (as results.json's context.config keeps them) that must be equal in every merged run; the
# teachers and the settings file's content (its SHA-256) must be equal too.
MUST_MATCH = ("random_teacher", "image_size", "max_epochs", "patience", "batch_size", "percentile", "seed",
              "per_kind")


def _load(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "results.json"
    if not path.is_file():
        msg = f"--merge: {folder} holds no results.json (not a finished study run)"
        raise FileNotFoundError(msg)
    return json.loads(path.read_text())


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    context = results["context"]
    return {**{key: context["config"].get(key) for key in MUST_MATCH}, "teachers": context.get("teachers"),
            "settings file": context.get("settings_sha256")}


def merge_runs(folders: Sequence[Path], out: Path, command: str = "") -> dict[str, Any]:
    """Merge the ``results.json`` of ``folders`` (first = the main category's run) into one report in ``out``.

    Raises:
        FileNotFoundError: a folder holds no ``results.json``.
        ValueError: a run's settings differ from the first run's, or two runs hold the same row.
    """
    folders = [Path(f) for f in folders]
    loaded = [_load(folder) for folder in folders]
    reference = _comparable(loaded[0])
    for folder, results in zip(folders[1:], loaded[1:], strict=True):
        differ = {k: (reference[k], v) for k, v in _comparable(results).items() if v != reference[k]}
        if differ:
            shown = "; ".join(f"{k}: {a!r} in {folders[0]}, {b!r} here" for k, (a, b) in differ.items())
            msg = f"--merge: {folder} was run with other settings than {folders[0]} ({shown})"
            raise ValueError(msg)
    owner: dict[tuple, Path] = {}
    for folder, results in zip(folders, loaded, strict=True):
        for row in results["main"]:
            key = (row["category"], row["scope"], row["kind"], row.get("teacher"))
            if key in owner:
                msg = f"--merge: {folder} and {owner[key]} both hold {key} (category, scope, kind, teacher)"
                raise ValueError(msg)
            owner[key] = folder
    first = loaded[0]
    categories = list(dict.fromkeys(c for results in loaded for c in results["context"]["categories"]))
    context = {
        **first["context"], "command": command, "categories": categories, "merged_from": [str(f) for f in folders],
        "data": list(dict.fromkeys(note for results in loaded for note in results["context"]["data"])),
        "weights": sorted({w for results in loaded for w in results["context"]["weights"]}),
        "wall_time_s": sum(results["context"]["wall_time_s"] for results in loaded),
    }
    merged = {
        "context": context, "runs": [run for results in loaded for run in results["runs"]],
        "main": [row for results in loaded for row in results["main"]], "cost": first["cost"],
        "dbscan": first["dbscan"], "main_category": first["main_category"],
        "figures": {f"{caption}, run {folder.name}": path for folder, results in zip(folders, loaded, strict=True)
                    for caption, path in results["figures"].items()},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = finish(merged, out)
    print(f"==> [study] merged {len(folders)} runs: {', '.join(str(p) for p in paths)}", flush=True)
    return merged
