"""DBSCAN on the embeddings of each plugin model, trained briefly on the real magnetic_tile set.

    nice -n 10 python benchmarks/dbscan_magnetic_tile.py --train-images 120 --image-size 128 --epochs 3

Each model (SimpleNet on an efficientnet_lite0 backbone, DistillClassifier distilled from an efficientnet_lite0
teacher, UNetAE, which has no backbone) is trained on evenly spaced train/good images; the backbone and teacher
weights are ``--weights`` (default ``packaged``: ImageNet, no network needed). The test folder is subsampled
(``--test-good`` good images, ``--test-defects`` per defect type, evenly spaced); half of it is the validation
split (``val_split_mode=from_test``: anomalib's post-processor sets its threshold there), disjoint from the
test half on which every number is computed. ``DBSCANPostProcessor`` runs in ``report`` mode with the training
images as the normal reference, so nothing is fitted on test images. Prints a Markdown table per model (the
DBSCAN metrics next to the model's own image AUROC, raw and normalised, and image F1) and leaves the CSV and plots
in each run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anomalib_simplenet import DistillClassifier, SimpleNet, UNetAE
from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.report import fmt, markdown_table
from anomalib_simplenet.lab.scores import raw_metrics
from anomalib_simplenet.lab.weights import (
    DEFAULT_BACKBONE,
    SIMPLENET_LITE0,
    add_weights_argument,
    weights_description,
    weights_kwargs,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "simplenet": lambda size, weights: SimpleNet(**SIMPLENET_LITE0, **weights_kwargs("SimpleNet", weights),
                                                 image_size=size, discriminator_hidden=256),
    "distill_classifier": lambda size, weights: DistillClassifier(
        mode="distill", teacher_backbone=DEFAULT_BACKBONE, **weights_kwargs("DistillClassifier", weights),
        image_size=size),
    "unet_ae": lambda size, weights: UNetAE(image_size=size),
}


def run(name: str, args: argparse.Namespace, root: Path) -> str:
    """Fit one model, test it with the callback; its Markdown section (DBSCAN metrics, the model's own metrics)."""
    torch.manual_seed(0)
    data = datamodule(root, "magnetic_tile", batch_size=8, eval_batch_size=16)
    callback = DBSCANPostProcessor(mode="report", min_samples=args.min_samples, pca_components=args.pca)
    model = MODELS[name](args.image_size, args.weights)
    result = fit(name, model, data, args.output / name, args.epochs, test=True, callbacks=[callback])
    if result.status != "ok":
        return f"\n### {name}: failed: {result.error}\n"
    raw = raw_metrics(model, data.test_dataloader())
    rows = [[key, fmt(value) if not float(value).is_integer() else int(value)] for key, value in callback.metrics.items()]
    rows += [["model image AUROC raw", fmt(raw["image_auroc"])],
             ["model image AUROC normalised (Engine.test)", fmt(result.metrics["image_AUROC"])],
             ["model image_F1Score", fmt(result.metrics["image_F1Score"])]]
    return (f"\n### {name} ({result.fit_s:.0f}s, files in {result.run_dir})\n\nweights: {weights_description(model)}"
            f"\n\n{markdown_table(['metric', 'value'], rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=Path("results/bench_dbscan_magnetic_tile"))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--train-images", type=int, default=120)
    parser.add_argument("--test-good", type=int, default=60)
    parser.add_argument("--test-defects", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-samples", type=int, default=5)
    parser.add_argument("--pca", type=float, default=0.9, help="PCA explained-variance fraction")
    add_weights_argument(parser)
    args = parser.parse_args()

    root = subset(args.data, "magnetic_tile", args.output / "data", args.train_images, test_good=args.test_good,
                  test_defects=args.test_defects)
    tables = [run(name, args, root) for name in args.models]
    print(f"\nDBSCAN on magnetic_tile embeddings: {args.train_images} train images, {args.image_size}px, "
          f"{args.epochs} epochs, --weights {args.weights}, min_samples={args.min_samples}, PCA {args.pca:g} of "
          "the variance, eps automatic (95% of normal images core points)")
    print("\n".join(tables))


if __name__ == "__main__":
    main()
