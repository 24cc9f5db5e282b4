"""Command line: ``python -m anomalib_simplenet.study`` (examples: ``docs/measuring.md``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .merge import merge_runs
from .run import StudyConfig, run_study
from .settings import KIND_TITLES

# (flags, StudyConfig field, argparse keywords); a field's default is StudyConfig's unless given here.
OPTIONS: tuple[tuple[tuple[str, ...], str, dict], ...] = (
    (("--out",), "output", {"type": Path, "required": True, "help": "run folder (everything is written here)"}),
    (("--categories",), "categories", {"nargs": "+", "help": "first = the main category"}),
    (("--data-root",), "data_root", {"type": Path, "default": Path("../shared/data"),
                                     "help": "folder of MVTec-layout categories (missing ones are generated)"}),
    (("--settings",), "settings_file", {"type": Path, "help": "the settings file"}),
    (("--models",), "kinds", {"nargs": "+", "choices": list(KIND_TITLES), "help": "model kinds to run"}),
    (("--settings-per-model",), "per_kind", {"type": int, "help": "use only the first N settings of each model"}),
    (("--teachers", "--teacher"), "teachers", {"nargs": "+", "help": "teacher networks, the first is the one the "
                                               "hypothesis is about: inception_v3, efficientnet_lite0/1/2 (packaged "
                                               "ImageNet weights); resnet18 needs network"}),
    (("--random-teacher",), "random_teacher", {"action": "store_true", "help": "random weights (plumbing only)"}),
    (("--image-size",), "image_size", {"type": int}),
    (("--max-train",), "max_train", {"type": int, "help": "normal training images per category (a fixed subset)"}),
    (("--max-test",), "max_test", {"type": int, "help": "test-folder images per category (half validate)"}),
    (("--max-epochs",), "max_epochs", {"type": int}),
    (("--patience",), "patience", {"type": int, "help": "EarlyStopping patience on the validation loss"}),
    (("--batch-size",), "batch_size", {"type": int}),
    (("--percentile",), "percentile", {"type": float, "help": "percentile of normal validation scores"}),
    (("--quantize-top",), "quantize_top", {"type": int, "help": "export the N best models to OpenVINO variants"}),
    (("--threads",), "threads", {"type": int, "default": None, "help": "CPU threads (default: all cores)"}),
    (("--throughput-seconds",), "throughput_seconds", {"type": float}),
    (("--dbscan-min-samples",), "dbscan_min_samples", {"type": int}),
    (("--no-all-categories",), "all_categories", {"action": "store_false",
                                                  "help": "skip the model trained on all categories"}),
    (("--only-all-categories",), "per_category", {"action": "store_false", "help": "fit only the classifier "
                                                  "trained on all categories (a split run; merge it with --merge)"}),
    (("--seed",), "seed", {"type": int}),
)


def parser() -> argparse.ArgumentParser:
    """The study's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m anomalib_simplenet.study", description="Does a small student distilled from a pretrained "
        "teacher detect anomalies as well as the teacher's own features, more cheaply, and better than the same "
        "student trained from scratch? Fits every setting of every model, chooses on validation data, evaluates on "
        "test, measures cost and quantization, clusters embeddings with DBSCAN and writes report.md/report.html.")
    defaults = StudyConfig(output=Path())
    for flags, name, keywords in OPTIONS:
        default = getattr(defaults, name)
        p.add_argument(*flags, dest=name, **{"default": list(default) if isinstance(default, tuple) else default,
                                             **keywords})
    p.add_argument("--merge", nargs="+", type=Path, metavar="RUN", help="merge these finished runs (first = the main "
                   "category's: cost, quantization, DBSCAN) into one report in --out; nothing is fitted")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (or merge runs); exit status 0 when every setting was fitted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(parser().parse_args(argv))
    command = "python -m anomalib_simplenet.study " + shlex.join(argv)
    if merge := args.pop("merge"):
        merge_runs(merge, args["output"], command)
        return 0
    if not args["per_category"] and (not args["all_categories"] or len(args["categories"]) < 2):
        parser().error("--only-all-categories needs at least two --categories and no --no-all-categories")
    args["data_root"] = args["data_root"] if args["data_root"].is_dir() else None
    if args["threads"] is None:
        del args["threads"]
    results = run_study(StudyConfig(**args, command=command))
    return 0 if all(r["status"] == "ok" for r in results["runs"]) else 1
