"""One report from study runs made separately (one category per run, the all-categories classifier as its own run).

Rows are only comparable when every run used the same study settings (:data:`MUST_MATCH`, the teachers and the
settings file's content), so runs that differ are refused, as is a row (category, scope, model) two runs both hold.
Accuracy rows and every fitted setting come from all runs; cost, quantization and DBSCAN from the first run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run import finish

# StudyConfig fields (as results.json's context.config keeps them) that must be equal in every merged run.
MUST_MATCH = ("random_teacher", "image_size", "max_epochs", "patience", "batch_size", "percentile", "seed",
              "per_kind")


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    context = results["context"]
    return {**{key: context["config"].get(key) for key in MUST_MATCH}, "teachers": context.get("teachers"),
            "settings file": context.get("settings_sha256")}


def merge_runs(folders: Sequence[Path], out: Path, command: str = "") -> dict[str, Any]:
    """Merge the ``results.json`` of ``folders`` (first = the main category's run) into one report in ``out``
    (figures stay in their run folders: ``report.md`` links to them, ``report.html`` embeds them).

    Raises:
        FileNotFoundError: a folder holds no ``results.json``.
        ValueError: a run's settings differ from the first run's, or two runs hold the same row.
    """
    folders = [Path(f) for f in folders]
    for folder in folders:
        if not (folder / "results.json").is_file():
            msg = f"--merge: {folder} holds no results.json (not a finished study run)"
            raise FileNotFoundError(msg)
    loaded = [json.loads((folder / "results.json").read_text()) for folder in folders]
    owner: dict[tuple, Path] = {}
    for folder, results in zip(folders, loaded, strict=True):
        differ = {k: (a, b) for (k, a), b in zip(_comparable(loaded[0]).items(), _comparable(results).values(),
                                                 strict=True) if a != b}
        if differ:
            shown = "; ".join(f"{k}: {a!r} in {folders[0]}, {b!r} here" for k, (a, b) in differ.items())
            msg = f"--merge: {folder} was run with other settings than {folders[0]} ({shown})"
            raise ValueError(msg)
        for row in results["main"]:
            key = (row["category"], row["scope"], row["kind"], row.get("teacher"))
            if key in owner:
                msg = f"--merge: {folder} and {owner[key]} both hold {key} (category, scope, kind, teacher)"
                raise ValueError(msg)
            owner[key] = folder
    first, contexts = loaded[0], [results["context"] for results in loaded]
    merged = {
        "context": {**first["context"], "command": command, "merged_from": [str(f) for f in folders],
                    **{key: list(dict.fromkeys(v for c in contexts for v in c[key])) for key in ("categories", "data")},
                    "weights": sorted({w for c in contexts for w in c["weights"]}),
                    "wall_time_s": sum(c["wall_time_s"] for c in contexts)},
        "runs": [run for results in loaded for run in results["runs"]],
        "main": [row for results in loaded for row in results["main"]],
        **{key: first[key] for key in ("cost", "dbscan", "main_category")},
        "figures": {f"{caption}, run {folder.name}": path for folder, results in zip(folders, loaded, strict=True)
                    for caption, path in results["figures"].items()},
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = finish(merged, Path(out))
    print(f"==> [study] merged {len(folders)} runs: {', '.join(str(p) for p in paths)}", flush=True)
    return merged
