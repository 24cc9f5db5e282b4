"""Accuracy of SimpleNet against anomalib's Padim, Patchcore, Glass and Supersimplenet on one category.

Same backbone weights, layers, input size, data and seed for all; each model in its own process. Usage, method and
outputs: ``docs/measuring.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomalib_simplenet.lab.data import subset
from anomalib_simplenet.lab.isolated import run_isolated
from anomalib_simplenet.lab.report import fmt, markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.weights import add_weights_argument

REPO = Path(__file__).resolve().parents[1]
MODELS = ("simplenet", "padim", "patchcore", "glass", "supersimplenet")
# SimpleNet epochs: with the default σ the validation loss is below 0.05 (and flattening) by epoch 10 on
# magnetic_tile, elpv_mono and elpv_poly with efficientnet_lite0 (benchmarks/simplenet_sweep.py, README).
DEFAULT_SIMPLENET_EPOCHS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None, help="default: results/accuracy_<category>")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    add_weights_argument(parser)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--resize-shorter-side", type=int, default=None,
                        help="resize the shorter side to this, then centre-crop --image-size (default: squash)")
    parser.add_argument("--train-images", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_SIMPLENET_EPOCHS, help="SimpleNet epochs")
    parser.add_argument("--peer-epochs", type=int, default=None,
                        help="Glass and Supersimplenet epochs (default: SimpleNet's; their papers use 640 / 300)")
    parser.add_argument("--coreset-ratio", type=float, default=0.01,
                        help="Patchcore coreset_sampling_ratio (anomalib default 0.1: hours on 2 CPU cores)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--aupro", action="store_true", help="also compute anomalib's AUPRO (slow on CPU)")
    parser.add_argument("--batch", type=int, default=8, help="training batch size (evaluation: 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--no-location-gaussian", dest="location_gaussian", action="store_false",
                        help="SimpleNet scores with its discriminator alone (the official scoring)")
    parser.add_argument("--no-grid-alignment", dest="grid_alignment", action="store_false",
                        help="SimpleNet upsamples with plain interpolation (the official maps, off the cells' positions)")
    parser.add_argument("--merge", nargs="*", type=Path, default=None,
                        help="only write the table of the accuracy.json files in these output folders")
    return parser.parse_args(argv)


def markdown(results: dict[str, dict[str, Any]], header: str) -> str:
    """The table: raw-score metrics with their normalised twins, anomalib's F1, cost, settings."""
    ok = [row for row in results.values() if "error" not in row]
    f1 = [key for key in ("image_F1Score", "pixel_F1Score") if any(key in row for row in ok)]
    offset = ["map offset dx, dy px"] if any("map_offset_x" in row for row in ok) else []
    columns = ["model", *metric_header(ok), *f1, *offset, "fit s", "test img/s", "epochs", "peak RSS MB", "settings"]
    rows = []
    for name, row in results.items():
        if "error" in row:
            rows.append([name, f"failed: {row['error']}", *[""] * (len(columns) - 3), fmt(row.get("peak_rss_mb"), ".0f")])
            continue
        shift = [f"{fmt(row.get('map_offset_x'), '+.1f')}, {fmt(row.get('map_offset_y'), '+.1f')}"] if offset else []
        rows.append([name, *metric_cells(row, ok), *(fmt(row.get(key), ".3f") for key in f1), *shift,
                     fmt(row["fit_s"], ".0f"), fmt(row["test_images_per_s"], ".1f"), row["epochs"],
                     fmt(row.get("peak_rss_mb"), ".0f"), row["note"]])
    note = ("raw = the models' own scores; normalised = after anomalib's post-processor (min-max with validation "
            "statistics, clamped to [0, 1]); pixel metrics on maps shrunk to ≤128 px; F1: anomalib's Engine.test; "
            "map offset: centroid of each defective image's hottest 1 % minus its mask's, mean, in input pixels "
            "(+ = right / below)")
    return f"{header}\n\n{note}\n\n{markdown_table(columns, rows)}"


def write(results: dict[str, dict[str, Any]], header: str, output: Path, settings: str = "") -> str:
    """``accuracy.json`` and ``accuracy.md`` in model order; a later run reuses rows whose ``settings`` match."""
    results = {name: results[name] for name in MODELS if name in results}
    payload = {"header": header, "settings": settings, "results": results}
    (output / "accuracy.json").write_text(json.dumps(payload, indent=1))
    table = markdown(results, header)
    (output / "accuracy.md").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    args.output = (args.output or REPO / "results" / f"accuracy_{args.category}").resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    if args.merge:  # one table from runs split over several invocations
        runs = [json.loads((folder / "accuracy.json").read_text()) for folder in args.merge]
        merged = {name: row for run in runs for name, row in run["results"].items()}
        print(write(merged, "\n".join(dict.fromkeys(run["header"] for run in runs)), args.output))
        return {name: merged[name] for name in MODELS if name in merged}
    root = args.data_root
    if args.train_images is not None:
        root = subset(root, args.category, args.output / "data", args.train_images)
    peer_epochs = args.peer_epochs or args.epochs
    official = {key: False for key in ("location_gaussian", "grid_alignment") if not getattr(args, key)}
    geometry = f"{args.image_size} px" + (f" (shorter side {args.resize_shorter_side}, centre crop)"
                                          if args.resize_shorter_side else "")
    settings = (f"{args.category}: backbone {args.backbone}, --weights {args.weights}, {geometry}, "
                f"train images: {args.train_images or 'all'}, seed {args.seed}")
    results: dict[str, dict[str, Any]] = {}
    previous = args.output / "accuracy.json"
    if previous.is_file():  # rows of models not run now come from the last run with the same settings
        earlier = json.loads(previous.read_text())
        if earlier.get("settings") == settings:
            results = {k: v for k, v in earlier["results"].items() if k not in args.models}
    common = {key: getattr(args, key) for key in ("category", "backbone", "image_size", "seed", "batch", "num_workers",
                                                  "aupro", "coreset_ratio", "resize_shorter_side")}
    common.update(root=str(root), output=str(args.output), weights=str(args.weights))
    for name in args.models:
        epochs = args.epochs if name == "simplenet" else peer_epochs
        print(f"==> {name}: {epochs} epoch(s) in its own process", flush=True)
        options = {**common, "name": name, "epochs": epochs, **(official if name == "simplenet" else {})}
        results[name] = run_isolated("anomalib_simplenet.lab.compare:fit_and_score", options, args.output / "processes",
                                     name)
        print(json.dumps({name: results[name]}), flush=True)
        write(results, settings, args.output, settings)
    weights = next((row["weights"] for row in results.values() if "weights" in row), str(args.weights))
    header = f"{settings}, weights: {weights}, SimpleNet {args.epochs} epochs, peers {peer_epochs}"
    print(write(results, header, args.output, settings))
    return {name: results[name] for name in MODELS if name in results}


if __name__ == "__main__":
    main()
