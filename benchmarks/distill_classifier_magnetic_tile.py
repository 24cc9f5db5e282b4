"""DistillClassifier on magnetic_tile: ``mode="scratch"`` vs ``mode="distill"``; prints a table.

A deterministic subset (evenly spaced images of each folder in sorted order) is copied into a temporary MVTec-layout
root; validation images are half of that test subset (seeded, disjoint from the test images). Both runs use
the same data, seed and settings. Run::

    python benchmarks/distill_classifier_magnetic_tile.py [--data /work/shared/data] [--train 200] ...

The distill teacher is ``--teacher`` (default ``efficientnet_lite0``) with ``--weights`` (default ``packaged``:
ImageNet weights with no network; ``random`` only checks the plumbing). The weights actually loaded are printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from sklearn.metrics import roc_auc_score

from anomalib_simplenet import DistillClassifier
from anomalib_simplenet.components.weights_option import DEFAULT_BACKBONE, add_weights_argument, weights_kwargs
from anomalib_simplenet.data.subset import make_subset

DEFECTS = ("blowhole", "break", "crack", "fray", "uneven")


@torch.no_grad()
def raw_image_aurocs(model: DistillClassifier, datamodule: AnomalibDataModule) -> dict[str, float]:
    """Image AUROC of the raw test scores, for both image-score kinds of the same trained model."""
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {"embedding": [], "map_max": []}
    labels = []
    for batch in datamodule.test_dataloader():
        images = model.pre_processor.transform(batch.image.to(model.device))
        features = model.model.student.features(images)
        for kind in scores:
            model.model.image_score = kind
            scores[kind].append(model.model.score(features, images.shape[-2:])[0].cpu())
        labels.append(batch.gt_label.cpu())
    model.model.image_score = model.hparams.image_score
    truth = torch.cat(labels).numpy()
    return {kind: roc_auc_score(truth, torch.cat(values).numpy()) for kind, values in scores.items()}


def run(mode: str, root: Path, args: argparse.Namespace, output: Path) -> dict[str, float | str]:
    """Fit and test one mode; return metrics, the training time and the teacher's weights."""
    from anomalib.data import MVTecAD

    torch.manual_seed(args.seed)
    datamodule = MVTecAD(
        root=root, category="magnetic_tile", train_batch_size=args.batch_size, eval_batch_size=args.batch_size,
        num_workers=args.workers, val_split_mode="from_test", val_split_ratio=0.5, seed=args.seed,
    )
    model = DistillClassifier(
        mode=mode, teacher_backbone=args.teacher, **weights_kwargs("DistillClassifier", args.weights),
        image_size=args.image_size, visualizer=False,
    )
    engine = Engine(
        max_epochs=args.epochs, default_root_dir=output / mode, accelerator=args.accelerator, devices=1,
        logger=False, enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    (metrics,) = engine.test(model, datamodule=datamodule)
    teacher = model.teacher_weights_source or "none"
    return {**metrics, **raw_image_aurocs(model, datamodule), "train_s": train_seconds, "teacher": teacher}


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
        source, target = args.data / "magnetic_tile", Path(temporary) / "data"
        root = make_subset(source, target / "magnetic_tile", args.train, args.test_good, args.test_defect, DEFECTS)
        results = {mode: run(mode, root, args, Path(temporary) / "results") for mode in args.modes}

    teacher = next((m["teacher"] for m in results.values() if m["teacher"] != "none"), "none")
    print(
        f"\nmagnetic_tile subset: {args.train} train, {args.test_good} good + 5×{args.test_defect} defect test images "
        f"(half of them → validation), image_size {args.image_size}, {args.epochs} epochs, seed {args.seed}, "
        f"teacher: {args.teacher}, weights: {teacher}\n",
    )
    columns = ["mode", "image AUROC (embedding, default)", "image AUROC (map max)", "pixel AUROC", "image F1"]
    print("| " + " | ".join([*columns, "training time (s)"]) + " |")
    print("|---|---|---|---|---|---|")
    for mode, m in results.items():
        print(
            f"| {mode} | {m['image_AUROC']:.3f} | {m['map_max']:.3f} | {m['pixel_AUROC']:.3f} "
            f"| {m['image_F1Score']:.3f} | {m['train_s']:.0f} |",
        )


if __name__ == "__main__":
    main()
