"""DBSCAN on the embeddings of each plugin model, trained briefly on the real magnetic_tile set.

    nice -n 10 python benchmarks/dbscan_magnetic_tile.py --train-images 120 --image-size 128 --epochs 3

Each model (SimpleNet on an efficientnet_lite0 backbone, DistillClassifier distilled from an efficientnet_lite0
teacher, UNetAE, which has no backbone) is trained on evenly spaced train/good images; the backbone and teacher
weights are ``--weights`` (default ``packaged``: ImageNet, no network needed). The test folder is subsampled
(``--test-good`` good images, ``--test-defects`` per defect type, evenly spaced); half of it is the validation
split (``val_split_mode=from_test``: anomalib's post-processor sets its threshold there), disjoint from the
test half on which every number is computed. ``DBSCANPostProcessor`` runs in ``report`` mode with the training
images as the normal reference, so nothing is fitted on test images. Prints a Markdown table per model (the
DBSCAN metrics next to the model's own image AUROC/F1) and leaves the CSV and plots in each run folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_simplenet import DistillClassifier, SimpleNet, UNetAE
from anomalib_simplenet.components.weights_option import (
    DEFAULT_BACKBONE,
    SIMPLENET_LITE0,
    WeightsChoice,
    add_weights_argument,
    weights_description,
    weights_kwargs,
)
from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.data.subset import make_subset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "simplenet": lambda size, weights: SimpleNet(**SIMPLENET_LITE0, **weights_kwargs("SimpleNet", weights),
                                                 image_size=size, discriminator_hidden=256),
    "distill_classifier": lambda size, weights: DistillClassifier(
        mode="distill", teacher_backbone=DEFAULT_BACKBONE, **weights_kwargs("DistillClassifier", weights),
        image_size=size),
    "unet_ae": lambda size, weights: UNetAE(image_size=size),
}


def run(name: str, args: argparse.Namespace, root: Path) -> tuple[dict[str, float], dict[str, float], Path, float, str]:
    """Fit one model, test it with the callback; return DBSCAN and anomalib metrics, run folder, seconds, weights."""
    torch.manual_seed(0)
    datamodule = MVTecAD(root=root, category="magnetic_tile", train_batch_size=8, eval_batch_size=16,
                         num_workers=0, val_split_mode="from_test", val_split_ratio=0.5, seed=0)
    callback = DBSCANPostProcessor(mode="report", min_samples=args.min_samples, pca_components=args.pca)
    engine = Engine(max_epochs=args.epochs, default_root_dir=args.output / name, accelerator="cpu", devices=1,
                    logger=False, enable_progress_bar=False, callbacks=[callback])
    weights: WeightsChoice = args.weights
    model = MODELS[name](args.image_size, weights)
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    seconds = time.perf_counter() - start
    return callback.metrics, results, Path(engine.trainer.default_root_dir), seconds, weights_description(model)


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

    root = make_subset(args.data / "magnetic_tile", args.output / "data" / "magnetic_tile", args.train_images,
                  args.test_good, args.test_defects)
    tables = []
    for name in args.models:
        dbscan, results, folder, seconds, weights = run(name, args, root)
        rows = [f"| {key} | {value:.4f} |" if not float(value).is_integer() else f"| {key} | {int(value)} |"
                for key, value in dbscan.items()]
        rows += [f"| model image_AUROC | {results['image_AUROC']:.4f} |",
                 f"| model image_F1Score | {results['image_F1Score']:.4f} |"]
        tables.append(f"\n### {name} ({seconds:.0f}s, files in {folder})\n\nweights: {weights}\n\n"
                      "| metric | value |\n|---|---|\n"
                      + "\n".join(rows))
    print(f"\nDBSCAN on magnetic_tile embeddings: {args.train_images} train images, {args.image_size}px, "
          f"{args.epochs} epochs, --weights {args.weights}, min_samples={args.min_samples}, PCA {args.pca:g} of "
          "the variance, eps automatic (95% of normal images core points)")
    print("\n".join(tables))


if __name__ == "__main__":
    main()
