"""DistillClassifier on magnetic_tile: ``mode="scratch"`` vs ``mode="distill"``; prints a table.

    python benchmarks/distill_classifier_magnetic_tile.py [--data /work/shared/data] [--train 200] ...

A deterministic subset (evenly spaced images of each folder in sorted order) is linked into a temporary
MVTec-layout root; validation images are half of that test subset (seeded, disjoint from the test images). Both
runs use the same data, seed and settings. The distill teacher is ``--teacher`` (default ``efficientnet_lite0``)
with ``--weights`` (default ``packaged``: ImageNet weights with no network; ``random`` only checks the plumbing).
Image/pixel AUROC are on raw scores next to anomalib's normalised ones; the image AUROC of the other image score
(``map_max``) of the same trained model is raw.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from anomalib_simplenet import DistillClassifier
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.report import fmt, markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.scores import raw_metrics
from anomalib_simplenet.lab.weights import DEFAULT_BACKBONE, add_weights_argument, weights_kwargs

DEFECTS = ("blowhole", "break", "crack", "fray", "uneven")


def run(mode: str, root: Path, args: argparse.Namespace, output: Path) -> dict[str, float | str]:
    """Fit and test one mode; return metrics (raw and normalised), the training time and the teacher's weights."""
    torch.manual_seed(args.seed)
    data = datamodule(root, "magnetic_tile", batch_size=args.batch_size, seed=args.seed, num_workers=args.workers)
    model = DistillClassifier(mode=mode, teacher_backbone=args.teacher, image_size=args.image_size, visualizer=False,
                              **weights_kwargs("DistillClassifier", args.weights))
    result = fit(mode, model, data, output / mode, args.epochs, test=True, accelerator=args.accelerator)
    if result.status != "ok":
        return {"error": result.error}
    row = {**result.metrics, **raw_metrics(model, data.test_dataloader())}
    other = "map_max" if model.model.image_score != "map_max" else "embedding"
    model.model.image_score = other
    row["other_score"], row["other_auroc"] = other, raw_metrics(model, data.test_dataloader())["image_auroc"]
    model.model.image_score = model.hparams.image_score
    return {**row, "train_s": result.fit_s, "teacher": model.teacher_weights_source or "none"}


def main() -> None:
    """Parse arguments, run both modes, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"), help="folder holding magnetic_tile/")
    parser.add_argument("--train", type=int, default=200, help="normal training images")
    parser.add_argument("--test-good", type=int, default=100)
    parser.add_argument("--test-defect", type=int, default=30, help="per defect type (5 types)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--teacher", default=DEFAULT_BACKBONE, help="timm backbone of the distill teacher")
    add_weights_argument(parser)
    parser.add_argument("--modes", nargs="+", default=["scratch", "distill"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        root = subset(args.data, "magnetic_tile", Path(temporary) / "data", args.train, test_good=args.test_good,
                      test_defects=args.test_defect, defects=DEFECTS)
        results = {mode: run(mode, root, args, Path(temporary) / "results") for mode in args.modes}

    ok = [m for m in results.values() if "error" not in m]
    teacher = next((m["teacher"] for m in ok if m["teacher"] != "none"), "none")
    print(f"\nmagnetic_tile subset: {args.train} train, {args.test_good} good + 5×{args.test_defect} defect test images "
          f"(half of them → validation), image_size {args.image_size}, {args.epochs} epochs, seed {args.seed}, "
          f"teacher: {args.teacher}, weights: {teacher}\n")
    print(markdown_table(
        ["mode", *metric_header(ok), "image AUROC raw, other image score", "image F1", "training time (s)"],
        [[mode, f"failed: {m['error']}"] if "error" in m else
         [mode, *metric_cells(m, ok), f"{fmt(m['other_auroc'], '.3f')} ({m['other_score']})",
          fmt(m.get("image_F1Score"), ".3f"), fmt(m["train_s"], ".0f")] for mode, m in results.items()]))


if __name__ == "__main__":
    main()
