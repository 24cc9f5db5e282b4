"""Command line: ``python -m anomalib_simplenet.study``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .merge import merge_runs
from .run import StudyConfig, run_study
from .settings import KINDS

EXAMPLE = """examples:
  python -m anomalib_simplenet.study --data-root ../shared/data --categories magnetic_tile elpv_mono elpv_poly \\
      --out results/study
  nice -n 10 python -m anomalib_simplenet.study --categories magnetic_tile --max-train 200 --max-test 200 \\
      --image-size 160 --max-epochs 15 --out results/study_magnetic_tile
  # a study split into runs (one category each, the all-categories classifier on its own), then one report:
  python -m anomalib_simplenet.study --categories toothbrush --teachers inception_v3 efficientnet_lite0 \\
      --no-all-categories --out results/study_toothbrush     # ... one run per category, then:
  python -m anomalib_simplenet.study --categories toothbrush mpdd_metal_plate --teachers inception_v3 \\
      efficientnet_lite0 --only-all-categories --out results/study_all
  python -m anomalib_simplenet.study --merge results/study_toothbrush results/study_mpdd_metal_plate \\
      results/study_all --out results/study_merged
Categories missing under --data-root are generated as synthetic data (so the study runs anywhere).
"""


def parser() -> argparse.ArgumentParser:
    """The study's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m anomalib_simplenet.study", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Does a small student distilled from a pretrained teacher detect anomalies as well as the "
        "teacher's own features, more cheaply, and better than the same student trained from scratch? Fits every "
        "setting of every model, chooses on validation data, evaluates on test, measures cost and quantization, "
        "clusters embeddings with DBSCAN and writes report.md/report.html in --out.",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (everything is written here)")
    p.add_argument("--categories", nargs="+", default=["magnetic_tile"], help="first = the main category")
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="folder of MVTec-layout categories")
    p.add_argument("--settings", type=Path, default=Path("configs/study.yaml"), help="the settings file")
    p.add_argument("--models", nargs="+", default=list(KINDS), choices=KINDS, help="model kinds to run")
    p.add_argument("--settings-per-model", type=int, help="use only the first N settings of each model")
    p.add_argument("--teachers", "--teacher", nargs="+", default=["efficientnet_lite0"],
                   help="teacher networks (teacher reference and distilled student fitted once per teacher; the "
                   "first is the one the hypothesis is about): inception_v3, efficientnet_lite0/1/2 (packaged "
                   "ImageNet weights); resnet18 needs network")
    p.add_argument("--random-teacher", action="store_true", help="random teacher weights (plumbing runs only)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--max-train", type=int, help="normal training images per category (deterministic subset)")
    p.add_argument("--max-test", type=int, help="test-folder images per category (split into validation and test)")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=5, help="EarlyStopping patience on the validation loss")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--percentile", type=float, default=95.0, help="percentile of normal validation scores")
    p.add_argument("--quantize-top", type=int, default=3, help="export the N best models to OpenVINO variants")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--throughput-seconds", type=float, default=3.0)
    p.add_argument("--dbscan-min-samples", type=int, default=5)
    p.add_argument("--no-all-categories", action="store_true", help="skip the model trained on all categories")
    p.add_argument("--only-all-categories", action="store_true",
                   help="fit only the classifier trained on all categories (a split run; merge it with --merge)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--merge", nargs="+", type=Path, metavar="RUN",
                   help="merge these finished runs (first = the main category's: cost, quantization, DBSCAN) into "
                   "one report in --out; nothing is fitted")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; exit status 0 when every setting was fitted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    command = "python -m anomalib_simplenet.study " + shlex.join(argv)
    if args.merge:
        merge_runs(args.merge, args.out, command)
        return 0
    if args.only_all_categories and (args.no_all_categories or len(args.categories) < 2):
        parser().error("--only-all-categories needs at least two --categories and no --no-all-categories")
    config = StudyConfig(
        output=args.out, categories=args.categories,
        data_root=args.data_root if args.data_root.is_dir() else None, settings_file=args.settings,
        kinds=args.models, per_kind=args.settings_per_model, teachers=args.teachers, random_teacher=args.random_teacher,
        image_size=args.image_size, max_train=args.max_train, max_test=args.max_test, max_epochs=args.max_epochs,
        patience=args.patience, batch_size=args.batch_size, percentile=args.percentile,
        quantize_top=args.quantize_top, throughput_seconds=args.throughput_seconds,
        dbscan_min_samples=args.dbscan_min_samples, all_categories=not args.no_all_categories,
        per_category=not args.only_all_categories, seed=args.seed, command=command,
    )
    if args.threads:
        config.threads = args.threads
    results = run_study(config)
    return 0 if all(r["status"] == "ok" for r in results["runs"]) else 1
